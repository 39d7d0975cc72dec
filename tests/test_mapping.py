"""pyrt.io.mapping: 2 MiB-aligned read-only file mappings, page-cache prefetch, and their lifetimes."""

import gc
import os
import sys

import numpy as np
import pytest

from pyrt.io import mapping

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux mapping path")


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "blob.bin"
    data = np.random.default_rng(0).integers(0, 256, (5 << 20) + 123, dtype=np.uint8)  # not a page multiple
    p.write_bytes(data.tobytes())
    return str(p), data


@linux
def test_aligned_mapping_reads_the_file(data_file):
    path, data = data_file
    a = mapping.map_file(path)
    assert a.ctypes.data % mapping.HUGE_PAGE == 0
    assert not a.flags.writeable
    np.testing.assert_array_equal(a, data)
    with pytest.raises(ValueError):
        a[0] = 1


@linux
def test_views_keep_the_mapping_alive(data_file):
    path, data = data_file
    a = mapping.map_file(path)
    tail = a[-1000:].reshape(10, 100)
    del a
    gc.collect()
    np.testing.assert_array_equal(tail.reshape(-1), data[-1000:])


def test_fallback_is_memmap(data_file, monkeypatch):
    path, data = data_file
    monkeypatch.setenv("PYRT_MMAP_ALIGN", "0")
    a = mapping.map_file(path)
    assert isinstance(a, np.memmap)
    np.testing.assert_array_equal(a, data)


@linux
def test_prefetch_fills_the_page_cache(data_file):
    path, data = data_file
    mapping.drop_from_page_cache(path)
    a = mapping.map_file(path)
    before = mapping.resident_fraction(a)
    if before >= 0.999:
        pytest.skip("this kernel kept the file cached after POSIX_FADV_DONTNEED")
    assert mapping.prefetch(path, a) is True
    assert mapping.resident_fraction(a) == 1.0
    assert mapping.prefetch(path, a) is False      # all cached: nothing to do
    np.testing.assert_array_equal(a, data)
    # our page tables were dropped again: the prefetch does not show up in RSS as mapped pages
    del a


def test_llm_reports_prefetch(synthetic_models):
    import pyrt
    path = str(next(iter(synthetic_models.values()))[0])
    mapping.drop_from_page_cache(path)
    llm = pyrt.load(path, n_ctx=64, warmup=False, use_mmap=True)  # the prefetch is for a mapped file
    assert llm.prefetched in (True, False)
    no = pyrt.load(path, n_ctx=64, warmup=False, prefetch=False, use_mmap=True)
    assert no.prefetched is False
    np.testing.assert_array_equal(llm.eval_logits([1, 2, 3]), no.eval_logits([1, 2, 3]))


def test_llm_logits_mapped_read_and_auto(synthetic_models):
    import pyrt
    path = str(next(iter(synthetic_models.values()))[0])
    got = {}
    for use_mmap in (True, False, None):
        llm = pyrt.load(path, n_ctx=64, warmup=False, use_mmap=use_mmap)
        assert llm.file.use_mmap is (use_mmap is True)  # auto reads a file this small
        got[use_mmap] = llm.eval_logits([1, 2, 3])
    np.testing.assert_array_equal(got[True], got[False])
    np.testing.assert_array_equal(got[True], got[None])


@linux
def test_huge_page_share_of_a_mapping(data_file):
    path, data = data_file
    a = mapping.map_file(path)
    int(a[::4096].sum())  # fault every page in
    got = mapping.huge_page_share(a)
    assert got is not None
    resident_mib, share = got
    assert 0 < resident_mib <= a.size / 2**20 + 4 and 0.0 <= share <= 1.0
    mapping.huge_page_share(np.zeros(10))  # anonymous memory: answers without failing


@linux
def test_rebuild_split_folios(tmp_path):
    """A cached file held in small folios (written 4 KiB at a time) is read again into 2 MiB folios, with the
    same bytes; a file already in 2 MiB folios is left alone."""
    p = str(tmp_path / "split.bin")
    n = (2 * mapping.PROBE_RANGES + 8) * mapping.HUGE_PAGE + 4321
    data = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8)
    with open(p, "wb", buffering=0) as f:
        for off in range(0, n, 4096):
            f.write(data[off:off + 4096].tobytes())
    a = mapping.map_file(p)
    if a.ctypes.data % mapping.HUGE_PAGE or not mapping._thp_allowed():
        pytest.skip("no 2 MiB-aligned mapping or transparent huge pages here")

    def share():
        mapping._touch(a, range(a.size // mapping.HUGE_PAGE))
        got = mapping.huge_page_share(a)
        mapping._load_libc().madvise(a.ctypes.data, a.size, 4)
        return got[0] * got[1] / (a.size // mapping.HUGE_PAGE * 2)  # PMD-mapped share of the whole ranges

    if share() >= mapping.MIN_HUGE_SHARE:
        pytest.skip("this kernel wrote the file in large folios")
    if not mapping.rebuild_split_folios(p, a):
        pytest.skip("the file's ranges come back in small folios here (no large folios on this filesystem)")
    assert share() > mapping.MIN_HUGE_SHARE
    np.testing.assert_array_equal(a, data)
    assert mapping.rebuild_split_folios(p, a) is False  # now mostly 2 MiB folios: nothing to do


def test_read_file_anon_reads_the_file(data_file, monkeypatch):
    path, data = data_file
    monkeypatch.setattr(mapping, "READ_CHUNK", 1 << 20)  # several chunks and a short last one
    a = mapping.read_file_anon(path)
    np.testing.assert_array_equal(a, data)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1
    if sys.platform.startswith("linux"):
        assert a.ctypes.data % mapping.HUGE_PAGE == 0
        got = mapping.huge_page_share(a)
        assert got is not None and 0.0 <= got[1] <= 1.0
    tail = a[-1000:]
    del a
    gc.collect()
    np.testing.assert_array_equal(tail, data[-1000:])  # views keep the memory alive
    with pytest.raises(OSError):
        mapping.read_file_anon(path + ".missing")


@linux
def test_read_file_anon_drops_the_page_cache(tmp_path):
    """After the read the file is not left in the page cache (no second copy of the weights)."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise")
    p = str(tmp_path / "cached.bin")
    data = np.random.default_rng(2).integers(0, 256, 8 << 20, dtype=np.uint8)
    data.tofile(p)
    mapping.drop_from_page_cache(p)  # written back, so that its pages are clean and can be dropped
    with open(p, "rb") as f:
        f.read()
    probe = mapping.map_file(p)  # mapped but never touched: mincore sees the page cache, not our page tables
    if mapping._resident_pages(probe) is None:
        pytest.skip("mincore is not available here")
    if mapping.resident_fraction(probe) < 0.99:
        pytest.skip("the file was not cached after a read (nothing to drop)")
    mapping.drop_from_page_cache(p)
    if mapping.resident_fraction(probe) > 0.01:
        pytest.skip("POSIX_FADV_DONTNEED does not drop this file's pages on this filesystem (tmpfs?)")
    with open(p, "rb") as f:
        f.read()
    a = mapping.read_file_anon(p)
    np.testing.assert_array_equal(a, data)
    assert mapping.resident_fraction(probe) < 0.01


def test_mem_available():
    got = mapping.mem_available()
    if sys.platform.startswith("linux"):
        assert got is not None and got > 0
