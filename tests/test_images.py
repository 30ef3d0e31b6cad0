"""images.py: image files found with one listing per folder, and read as RGB."""

import images


def test_find_missing_files_lists_each_folder_once(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "sub/b.jpg"):
        (tmp_path / name).write_bytes(b"")
    names = ["a.jpg", "sub/b.jpg", "sub/c.jpg", "nowhere/d.jpg", "b.jpg"]
    assert images.find_missing_files(tmp_path, names).tolist() == [False, False, True, True, True]
