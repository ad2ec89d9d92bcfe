"""A DataError's public text names the place and the kind of problem, never a data value.

``str(error)`` keeps the full detail for the node's own log; ``error.public`` is what
may leave the node. Each test builds a real bad input, and checks both texts: the
secrets (cell text, feature and label values, class and file names, foreign exception
text) are in the full message and absent from the public one.
"""

import importlib
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from fedmodel.config import RunConfig
from fedmodel.data.sources import (
    DataDescription,
    DataError,
    DataOptions,
    agree,
    check_fits,
    check_test_set,
    check_trainable,
    client_source,
    load_source,
)
from fedmodel.data.sources import arrays as arrays_module
from fedmodel.data.sources.arrays import labelled_from_arrays
from fedmodel.data.sources.validation import check_finite, check_labels

X = np.random.default_rng(2).random((12, 4), dtype=np.float32)
Y = np.arange(12) % 3
PLAIN = DataOptions()
THREE = DataOptions(num_classes=3)


def _raised(call, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    return info.value


def _check(error, *, names, secrets, root=None):
    """``public`` holds every name and no secret; the full message holds the secrets."""
    full, public = str(error), error.public
    for name in names:
        assert name in public, public
    # The test's own folder (whose name comes from the test's name) is no secret.
    rest = public.replace(str(root), "<root>") if root is not None else public
    for secret in secrets:
        assert secret.lower() in full.lower(), full
        assert secret.lower() not in rest.lower(), public
    return public


def _load(spec, options=PLAIN):
    return _raised(load_source, str(spec), options=options)


def _csv(path, text, name="t.csv"):
    (path / name).write_text(text)
    return path / name


def _npz(path, **arrays):
    np.savez(path / "d.npz", **{"x": X, "y": Y, **arrays})
    return path / "d.npz"


@pytest.fixture
def loader(tmp_path, monkeypatch):
    """Write ``<name>.py`` holding ``body``; return its ``name:load`` spec."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name, body):
        (tmp_path / f"{name}.py").write_text("import numpy as np, torch\n" + body)
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        written.append(name)
        return f"{name}:load"

    yield write
    for name in written:
        sys.modules.pop(name, None)


_DATASET = (
    "from torch.utils.data import Dataset\n"
    "class D(Dataset):\n"
    "    def __len__(self): return 5\n"
    "    def __getitem__(self, i): return {item}\n"
    "def load():\n"
    "    return D()\n"
)


def test_public_defaults_to_the_message_and_survives_pickling():
    plain = DataError("site.npz: the dataset is empty (0 examples)")
    assert plain.public == str(plain) == "site.npz: the dataset is empty (0 examples)"
    error = DataError("t.csv, line 3: 'John Smith' is not a number", public="t.csv, line 3: no")
    assert isinstance(error, ValueError)
    assert str(error) == "t.csv, line 3: 'John Smith' is not a number"
    assert error.public == "t.csv, line 3: no"
    copy = pickle.loads(pickle.dumps(error))  # errors cross processes (Ray, forked clients)
    assert (str(copy), copy.public) == (str(error), error.public)


def test_csv_text_cell_is_named_by_line_and_column_not_by_its_text(tmp_path):
    path = _csv(tmp_path, "age,zip,label\n41,90210,0\n37,John Smith 555-0199,1\n")
    error = _load(path)
    public = _check(error, names=[str(path), "line 3", "column 'zip'", "not a number"],
                    secrets=["John Smith", "555-0199"], root=tmp_path)
    assert public == f"{path}, line 3, column 'zip': not a number"
    assert "'John Smith 555-0199' is not a number" in str(error)


def test_csv_non_finite_feature_and_bad_labels_keep_their_values_private(tmp_path):
    cell = _load(_csv(tmp_path, "f0,label\n1,0\n-inf,1\n", "cell.csv"))
    _check(cell, names=["cell.csv, line 3, column 'f0'", "non-finite"], secrets=["-inf"],
           root=tmp_path)
    far = _load(_csv(tmp_path, "f0,label\n1,0\n2,1\n3,987654\n", "far.csv"), THREE)
    public = _check(far, names=["far.csv, line 4, column 'label'", "outside 0..2"],
                    secrets=["987654"], root=tmp_path)
    assert public.endswith("far.csv, line 4, column 'label': the label is outside 0..2")
    fraction = _load(_csv(tmp_path, "f0,label\n1,31337.5\n", "fraction.csv"))
    _check(fraction, names=["fraction.csv, line 2, column 'label'", "not an integer"],
           secrets=["31337.5"], root=tmp_path)
    name = _load(_csv(tmp_path, "f0,label\n1,0\n2,Jane Doe\n", "name.csv"))
    _check(name, names=["name.csv, line 3, column 'label'", "not an integer"],
           secrets=["Jane Doe"], root=tmp_path)
    negative = _load(_csv(tmp_path, "f0,label\n1,-4242\n", "negative.csv"))
    _check(negative, names=["negative.csv, line 2, column 'label'", "outside >= 0"],
           secrets=["-4242"], root=tmp_path)


def test_csv_without_a_header_does_not_publish_its_first_row(tmp_path):
    # The first line is a record, read as the header: its cells are no column names.
    path = _csv(tmp_path, "Jane Doe,1985-04-12,0\nJohn Smith,1990-01-01,1\n")
    error = _load(path)
    public = _check(error, names=[str(path), "no column 'label'", "3 fields"],
                    secrets=["Jane Doe", "1985-04-12"], root=tmp_path)
    assert "set run-config 'label-column'" in public


def test_csv_that_is_not_utf8_does_not_publish_the_bytes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,label\n\xff\xfe,1\n")
    error = _load(path)
    public = _check(error, names=[str(path), "not UTF-8 text"], secrets=["0xff"], root=tmp_path)
    assert public == f"{path}: not UTF-8 text (invalid start byte)"


def test_malformed_csv_names_the_line_not_the_parser_text(tmp_path):
    path = _csv(tmp_path, "f0,label\n1,0\n" + "7" * 200_000 + ",1\n")
    error = _load(path)
    public = _check(error, names=[str(path)], secrets=["field larger than field limit"],
                    root=tmp_path)
    assert public == f"{path}, line 3: malformed CSV"


def test_npz_non_finite_feature_and_bad_labels_keep_their_values_private(tmp_path):
    nan_x = X.copy()
    nan_x[7, 2] = np.nan
    nan = _load(_npz(tmp_path, x=nan_x))
    public = _check(nan, names=["d.npz['x']", "example 7", "non-finite"], secrets=["nan"],
                    root=tmp_path)
    assert public == f"{tmp_path / 'd.npz'}['x']: example 7 holds a non-finite value " \
                     "(features must be finite)"
    far = _load(_npz(tmp_path, y=np.where(np.arange(12) == 5, 987654, 0)), THREE)
    _check(far, names=["d.npz['y']", "label 5", "outside 0..2", "num-classes = 3"],
           secrets=["987654"], root=tmp_path)
    negative = _load(_npz(tmp_path, y=np.where(np.arange(12) == 4, -4242, 0)))
    _check(negative, names=["d.npz['y']", "label 4", "negative"], secrets=["-4242"],
           root=tmp_path)
    fraction = _load(_npz(tmp_path, y=np.where(np.arange(12) == 2, 2.718, 1.0)))
    _check(fraction, names=["d.npz['y']", "label 2", "not an integer"], secrets=["2.718"],
           root=tmp_path)


def test_npz_of_wrong_shapes_says_so_in_public(tmp_path):
    flat = _load(_npz(tmp_path, x=np.arange(12.0)))
    assert flat.public == str(flat)  # shapes are schema, not data values
    assert "d.npz['x']: features have shape (12,); expected [N, features...]" in flat.public
    short = _load(_npz(tmp_path, y=Y[:9]))
    assert short.public == str(short) == f"{tmp_path / 'd.npz'}: 12 examples but 9 labels; " \
                                         "they must match"
    (tmp_path / "junk.npz").write_bytes(b"Jane Doe, 1985-04-12")
    junk = _load(tmp_path / "junk.npz")
    public = _check(junk, names=["junk.npz", "cannot read as .npz"],
                    secrets=["File is not a zip file"], root=tmp_path)
    assert public.endswith("cannot read as .npz (a NumPy zip archive): BadZipFile")


def test_npy_folder_with_a_corrupt_header_does_not_publish_the_file_bytes(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.npy").write_bytes(b"SECRET42" + bytes(64))
    np.save(tmp_path / "folder" / "y.npy", Y)
    error = _load(tmp_path / "folder")
    public = _check(error, names=["x.npy", "cannot read as a NumPy array"], secrets=["SECRET"],
                    root=tmp_path)
    assert public.endswith("x.npy: cannot read as a NumPy array: ValueError")


def test_features_left_on_disk_name_the_example_not_its_value(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays_module, "ON_DISK_MIN_BYTES", 1)
    (tmp_path / "folder").mkdir()
    x = X.copy()
    x[9, 1] = np.inf
    np.save(tmp_path / "folder" / "x.npy", x)
    np.save(tmp_path / "folder" / "y.npy", Y)
    error = _load(tmp_path / "folder")
    _check(error, names=["folder/x.npy", "example 9", "non-finite"], secrets=["inf"],
           root=tmp_path)


def _image_folder(root, *images):
    for folder, name, image in images:
        (root / folder).mkdir(parents=True, exist_ok=True)
        image.save(root / folder / name)
    return root


def test_image_folder_names_images_by_position_not_by_class_or_file_name(tmp_path):
    secrets = ["alice_smith", "bob_jones", "patient_0042"]
    corrupt = _image_folder(tmp_path / "corrupt", ("alice_smith", "a.png", Image.new("L", (4, 4))))
    (corrupt / "bob_jones").mkdir()
    (corrupt / "bob_jones" / "patient_0042.png").write_bytes(b"\x89PNG not really")
    error = _load(corrupt)
    public = _check(error, names=[str(corrupt), "file 0 of class folder 1", "unreadable image"],
                    secrets=["bob_jones", "patient_0042", "cannot identify"], root=tmp_path)
    assert public.endswith("unreadable image: UnidentifiedImageError")

    sizes = _image_folder(
        tmp_path / "sizes",
        ("alice_smith", "patient_0001.png", Image.new("L", (4, 4))),
        ("bob_jones", "patient_0042.png", Image.new("L", (5, 4))),
    )
    public = _check(_load(sizes),
                    names=["file 0 of class folder 1", "is 5x4 but file 0 of class folder 0 is "
                           "4x4", "set run-config 'image-size'"],
                    secrets=[*secrets, "patient_0001"], root=tmp_path)
    assert public.startswith(f"{sizes}: ")

    text = _image_folder(tmp_path / "text", ("alice_smith", "a.png", Image.new("L", (4, 4))))
    (text / "alice_smith" / "patient_0042.txt").write_text("Alice Smith, 1985-04-12")
    _check(_load(text), names=["file 1 of class folder 0", "not a PNG or JPEG image"],
           secrets=["alice_smith", "patient_0042"], root=tmp_path)

    deep = _image_folder(tmp_path / "deep",
                         ("alice_smith", "p.png", Image.fromarray(np.zeros((4, 4), np.uint16))))
    _check(_load(deep), names=["file 0 of class folder 0", "image mode 'I;16' cannot be "
                               "converted to 'L'"], secrets=["alice_smith"], root=tmp_path)

    stray = _image_folder(tmp_path / "stray", ("alice_smith", "p.png", Image.new("L", (4, 4))))
    (stray / "bob_jones_ssn.txt").write_text("078-05-1120")
    _check(_load(stray), names=[str(stray), "entry 1 (in sorted order) is a file"],
           secrets=["bob_jones_ssn"], root=tmp_path)


def test_python_loader_public_text_holds_no_values_and_no_loader_exception_text(loader):
    raises = _load(loader("leaky_call", "def load():\n    raise ValueError('Jane Doe owes 42')\n"))
    assert _check(raises, names=["leaky_call:load", "calling it raised ValueError"],
                  secrets=["Jane Doe"]) == "leaky_call:load: calling it raised ValueError"
    imports = _load(loader("leaky_import", "raise RuntimeError('SSN 078-05-1120')\n"))
    _check(imports, names=["leaky_import:load", "cannot import module 'leaky_import'",
                           "RuntimeError"], secrets=["078-05-1120"])
    label = _load(loader("text_label", _DATASET.format(item="(torch.zeros(3), 'John Smith')")))
    public = _check(label, names=["text_label:load", "item 0", "expected one integer"],
                    secrets=["John Smith"])
    assert public == "text_label:load: item 0 has a label of type str and shape (); " \
                     "expected one integer"
    feature = _load(loader("bad_item", _DATASET.format(
        item="(torch.full((3,), float('inf') if i == 3 else 0.0), 0)")))
    _check(feature, names=["bad_item:load", "example 3", "non-finite"], secrets=["inf"])
    far = _load(loader("far_label", _DATASET.format(item="(torch.zeros(3), 987654 * (i == 2))")),
                THREE)
    _check(far, names=["far_label:load (labels)", "label 2", "outside 0..2"], secrets=["987654"])
    tensors = _load(loader("far_tensor", (
        "from torch.utils.data import TensorDataset\n"
        "def load():\n"
        "    return TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 31337, 2]))\n"
    )), THREE)
    _check(tensors, names=["far_tensor:load (labels)", "label 2", "outside 0..2"],
           secrets=["31337"])


def test_array_and_validation_checks_name_the_index_not_the_value():
    x = X.copy()
    x[3, 0] = np.float32(-np.inf)
    error = _raised(labelled_from_arrays, x, Y, origin="site.npz", num_classes=0)
    assert _check(error, names=["site.npz (features)", "example 3"], secrets=["-inf"]) == (
        "site.npz (features): example 3 holds a non-finite value (features must be finite)"
    )
    big = np.zeros((4, 2))
    big[2, 1] = 1e308 * 10
    _check(_raised(check_finite, big, origin="site.npz", offset=100),
           names=["site.npz: example 102"], secrets=["inf"])
    labels = np.array([0.0, 1.0, 6.25, 2.0])
    _check(_raised(check_labels, labels, origin="site.npz"), names=["label 2", "not an integer"],
           secrets=["6.25"])
    _check(_raised(check_labels, np.array([0, 1, 2, 987654]), origin="site.npz", num_classes=3),
           names=["label 3", "outside 0..2"], secrets=["987654"])
    _check(_raised(labelled_from_arrays, X, np.where(Y == 1, -4242, Y), origin="site.npz",
                   num_classes=0), names=["site.npz (labels): label 1 is negative"],
           secrets=["-4242"])
    small = _raised(check_trainable, 12, batch_size=32, dp=True, delta=1e-5, origin="site.npz")
    assert small.public == str(small)  # a number of examples and options: no data values


def _description(shape=(1, 8, 8), classes=10, names=()):
    return DataDescription(input_shape=shape, num_classes=classes, num_examples=100,
                           class_names=names)


def test_federation_agreement_hides_class_names_and_inferred_class_counts(tmp_path):
    names = ("alice_smith", "bob_jones")
    folders = _raised(agree, {"a": _description(classes=2, names=names),
                              "c": _description(classes=2, names=names),
                              "b": _description(classes=1, names=("carol_white",))})
    _check(folders, names=["b: its class folders (1) differ", "other clients' (2)"],
           secrets=["alice_smith", "bob_jones", "carol_white"])
    many = _raised(agree, {"a": _description(classes=77)}, num_classes=10)
    assert _check(many, names=["a: has more classes", "num-classes = 10"], secrets=["77"]) == (
        "a: has more classes than run-config num-classes = 10"
    )
    reach = _raised(agree, {"img": _description(classes=2, names=names),
                            "tab": _description(classes=77)})
    _check(reach, names=["tab: labels are outside the image-folder clients' 2 classes"],
           secrets=["76", "alice_smith", "bob_jones"])
    few = _raised(agree, {"a": _description(classes=1)})
    _check(few, names=["need at least 2"], secrets=["labels are 0"])

    federation = agree({"a": _description(shape=(4,), classes=3)})
    # The largest plausible inferred count for 12 examples: label 11, 12 classes.
    np.savez(tmp_path / "test.npz", x=X, y=np.where(np.arange(12) == 6, 11, 0))
    test = load_source(str(tmp_path / "test.npz"), options=PLAIN)
    _check(_raised(check_test_set, test, federation),
           names=["test.npz (test-data): label 6 is outside the clients' classes 0..2"],
           secrets=["11"], root=tmp_path)
    _check(_raised(check_fits, test, federation),
           names=["test.npz: has more classes than the federation's model (3)"],
           secrets=["12"], root=tmp_path)
    images = _image_folder(tmp_path / "imgs", ("alice_smith", "0.png", Image.new("L", (2, 2))),
                           ("bob_jones", "1.png", Image.new("L", (2, 2))))
    image_test = load_source(str(images), options=PLAIN)
    image_federation = agree({"a": _description(shape=(1, 2, 2), classes=2,
                                                names=("carol_white", "dan_brown"))})
    _check(_raised(check_test_set, image_test, image_federation),
           names=["imgs (test-data): its class folders (2) differ", "clients' (2)"],
           secrets=["alice_smith", "carol_white"], root=tmp_path)


def test_a_partitioning_failure_does_not_publish_the_partitioner_text(tmp_path):
    np.savez(tmp_path / "all.npz", x=X[:3], y=Y[:3])
    config = RunConfig.from_mapping(
        {"dataset": "custom", "data-path": str(tmp_path / "all.npz"), "num-classes": 3}
    )
    error = _raised(client_source, config, node_config={"partition-id": 0, "num-partitions": 5})
    public = _check(error, names=["all.npz", "cannot split for 5 clients"],
                    secrets=["cannot split 3 examples"], root=tmp_path)
    assert public.endswith("cannot split for 5 clients with partitioner 'iid'")


def test_loading_errors_without_data_values_publish_the_message(tmp_path):
    for error in (
        _load(tmp_path / "nope.npz"),
        _load(_csv(tmp_path, "f0,f1,label\n1,2,0\n1,0\n")),
        _raised(load_source, "", options=PLAIN),
        _load("json:nothing_here"),
    ):
        assert error.public == str(error), error.public
