"""Models: the spectrogram ViT encoder, EAT's masks, CNN decoder and student/teacher pretraining model.

Import from the submodules (``eat.model.vit``, ``eat.model.masking``, ``eat.model.decoder``,
``eat.model.eat``, ``eat.model.convert``); this package file stays empty so that data-loader workers
importing the masks do not pay for anything else.
"""
