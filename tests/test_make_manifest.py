import sys
from pathlib import Path

import numpy as np
import procs
import soundfile

from eat.data.manifest import read_manifest

TOOL = str(Path(__file__).resolve().parents[1] / "tools" / "make_manifest.py")


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    soundfile.write(root / "b.wav", rng.standard_normal(1600).astype(np.float32) * 0.1, 16000)
    soundfile.write(root / "sub" / "a.flac", rng.standard_normal(800).astype(np.float32) * 0.1, 8000)
    soundfile.write(root / "sub" / "C.WAV", np.zeros((400, 2), np.float32), 16000)  # one 25 ms frame
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.wav").write_text("not audio at all\n")
    (root / "readme.txt").write_text("ignored: not an audio extension\n")


def _run(*args):
    return procs.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True)


def test_good_files_written_bad_ones_reported(tmp_path):
    _tree(tmp_path / "audio")
    r = _run(tmp_path / "audio", tmp_path / "out" / "m.tsv", "--workers", "3")
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path / "out" / "m.tsv")
    assert m.root == (tmp_path / "audio").resolve()
    assert m.entries == [("b.wav", 1600), ("sub/C.WAV", 400), ("sub/a.flac", 800)]  # sorted, native rate
    assert (tmp_path / "out" / "m.tsv").read_text().splitlines()[1] == "b.wav\t1600"
    assert "wrote 3 clips" in r.stdout
    assert "warning: 3 unreadable file(s)" in r.stderr
    for name in ("corrupt.wav", "empty.wav: empty file", "notes.wav"):
        assert name in r.stderr
    assert "Traceback" not in r.stderr


def test_extension_filter_and_verify(tmp_path):
    _tree(tmp_path / "audio")
    x = np.random.default_rng(1).standard_normal(48000).astype(np.float32) * 0.1
    soundfile.write(tmp_path / "audio" / "damaged.flac", x, 16000)
    data = bytearray((tmp_path / "audio" / "damaged.flac").read_bytes())
    for i in range(2000, len(data) - 100, 7):  # garble the audio frames, keep the header
        data[i] = (data[i] * 31 + 7) % 256
    (tmp_path / "audio" / "damaged.flac").write_bytes(bytes(data))
    r = _run(tmp_path / "audio", tmp_path / "f.tsv", "--ext", "flac")
    assert r.returncode == 0 and [e[0] for e in read_manifest(tmp_path / "f.tsv").entries] == ["damaged.flac", "sub/a.flac"]
    v = _run(tmp_path / "audio", tmp_path / "v.tsv", "--ext", "flac", "--verify")
    assert v.returncode == 0 and [e[0] for e in read_manifest(tmp_path / "v.tsv").entries] == ["sub/a.flac"]
    assert "damaged.flac: cannot decode" in v.stderr


def test_user_errors_are_one_line(tmp_path):
    r = _run(tmp_path / "nope", tmp_path / "m.tsv")
    assert r.returncode != 0 and r.stderr.strip() == f"error: {tmp_path / 'nope'} is not a directory"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_text("text")
    r = _run(tmp_path / "bad", tmp_path / "m.tsv")
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: none of the 1 wav/flac files")
    (tmp_path / "none").mkdir()
    r = _run(tmp_path / "none", tmp_path / "m.tsv")
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: no wav/flac files under")
    assert _run("--help").returncode == 0
