"""Checksummed downloads with a clear way out when the network is closed."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from absl import logging
from tqdm import tqdm


class DataMissingError(FileNotFoundError):
  """The data is neither on disk nor downloadable; the message says what to do."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  """Hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def download(url: str, dest: str | os.PathLike, *, sha256: str | None,
             timeout: float = 30.0) -> Path:
  """Downloads ``url`` to ``dest`` atomically and checks its sha256.

  The file appears at ``dest`` only once it is complete and its checksum
  matches; a failed or interrupted download leaves nothing behind.

  Raises:
    OSError: the network or the server failed (callers turn this into a
      ``DataMissingError`` that names the file to put in place by hand).
    ValueError: the downloaded bytes do not have the expected checksum.
  """
  dest = Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  logging.info("Downloading %s -> %s", url, dest)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
      total = int(response.headers.get("Content-Length") or 0) or None
      with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
        while block := response.read(1 << 20):
          out.write(block)
          bar.update(len(block))
    if sha256 is not None and (got := sha256_file(tmp)) != sha256:
      raise ValueError(f"Checksum mismatch for {url}: expected sha256 {sha256}, got {got}.")
    os.replace(tmp, dest)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return dest
