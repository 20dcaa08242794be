"""The encoding inside the exports (distill/encoder.py): the graph encoder equals the numpy one cell by cell, and its
signature names are valid and unique. The exports' `serving_rows` in a fresh process: tests/test_features.py."""
import numpy as np
import pandas as pd
import pytest

from distill.encoder import RowEncoder, raw_inputs, signature_names
from distill.features import MISSING_CATEGORY, OOV, FeatureSpec
from tests.test_features import mixed_frame


def _spec_and_rows():
    train = mixed_frame(600, seed=1)
    train["grade"] = np.resize([3, 4, 5], len(train))  # integer codes: a categorical of numbers
    spec = FeatureSpec.fit(train, ["carat", "cut", "depth", "flag", "grade"])
    rows = pd.DataFrame({"carat": [0.5, None, 1.5, 2.0, np.nan],
                         "cut": ["Ideal", "", " Good ", "Astonishing", None],
                         "depth": [60.0, 61.0, 59.0, 62.5, 60.5],
                         "flag": [True, False, None, True, False],
                         "grade": [4, 5, 7, None, 3]})
    return spec, rows


def test_graph_encoding_equals_the_numpy_encoding_cell_by_cell():
    spec, rows = _spec_and_rows()
    kinds = {c.name: c.kind for c in spec.columns}
    assert kinds == {"carat": "numeric", "cut": "categorical", "depth": "numeric", "flag": "boolean", "grade": "categorical"}
    want = spec.encode(rows)  # [5, F]
    got = RowEncoder(spec).encode(raw_inputs(rows, spec)).numpy()
    np.testing.assert_array_equal(got, want)
    names = spec.encoded_names
    at = {n: i for i, n in enumerate(names)}
    assert got[3, at[f"cut={OOV}"]] == 1 and got[2, at["cut=Good"]] == 1  # unseen -> the bucket; blanks stripped
    assert got[1, at[f"cut={MISSING_CATEGORY}"]] == 1 and got[4, at[f"cut={MISSING_CATEGORY}"]] == 1
    assert got[2, at[f"grade={OOV}"]] == 1 and got[0, at["grade=4"]] == 1  # an unseen code takes the bucket
    carat = next(c for c in spec.columns if c.name == "carat")
    assert got[1, at["carat"]] == np.float32(carat.fill) and got[1, at["carat_missing"]] == 1


def test_signature_names_are_valid_and_unique():
    spec = FeatureSpec.fit(pd.DataFrame({"sepal length (cm)": [1.5, 2.5], "sepal_length__cm_": [1.5, 2.5],
                                         "1st": [1.5, 2.5], "cut=x": ["a", "b"]}),
                           ["sepal length (cm)", "sepal_length__cm_", "1st", "cut=x"])
    names = signature_names(spec)
    assert names == {"sepal length (cm)": "sepal_length__cm_", "sepal_length__cm_": "sepal_length__cm__2",
                     "1st": "f_1st", "cut=x": "cut_x"}
    out = RowEncoder(spec).encode(raw_inputs(pd.DataFrame({"sepal length (cm)": [3.0], "sepal_length__cm_": [4.0],
                                                           "1st": [5.0], "cut=x": ["b"]}), spec)).numpy()
    np.testing.assert_array_equal(out, [[3.0, 4.0, 5.0, 0.0, 1.0, 0.0]])


def test_a_table_with_no_columns_of_text_encodes_to_itself():
    frame = pd.DataFrame({"a": [1.5, 2.5, 3.5], "b": [0.5, 0.25, 0.125]})
    spec = FeatureSpec.fit(frame, ["a", "b"])
    assert spec.is_identity
    np.testing.assert_array_equal(RowEncoder(spec).encode(raw_inputs(frame, spec)).numpy(), frame.to_numpy(np.float32))


def test_far_shell_rows_of_a_mixed_table_are_valid_encodings_far_in_their_numbers(tmp_path):
    from distill import data
    from distill.transfer import far_uniform

    mixed_frame(400).to_csv(tmp_path / "mixed.csv", index=False)
    ds = data.load(data.DataConfig(dataset=str(tmp_path / "mixed.csv"), label_column="price"))
    x = far_uniform(ds, 300, 0.5, 2.0, seed=3)  # [300, F] raw encoded
    spec = ds.feature_spec
    decoded = spec.decode(x)
    np.testing.assert_array_equal(spec.encode(decoded), x)  # every row is an encoding a user could send
    lo, hi = ds.box()
    z = ds.normalise(x)
    numeric = [at.start for c, at in spec.blocks() if c.kind == "numeric"]
    width = hi[numeric] - lo[numeric]
    outside = ((z[:, numeric] < lo[numeric] - 0.5 * width) | (z[:, numeric] > hi[numeric] + 0.5 * width)).any(axis=1)
    assert outside.all()  # far in at least one number
    cut = spec.encoded_names.index(f"cut={OOV}")
    assert 0.05 < x[:, cut].mean() < 0.4  # unseen categories among them (1 in 5 of the 4 + 1 levels)
    np.testing.assert_array_equal(x, far_uniform(ds, 300, 0.5, 2.0, seed=3))  # bit-identical under one seed


def test_raw_inputs_refuse_what_the_encoding_refuses():
    """The raw-row signature's inputs are read as the training encoding reads cells: text in a numeric column, a
    lacking column and (under --missing refuse) an empty cell are errors, not silently imputed."""
    from distill.errors import BdkError

    spec, rows = _spec_and_rows()
    bad = rows.astype(object)
    bad.loc[2, "depth"] = "deep"
    for frame, words in ((bad, "has text 'deep'"), (rows.drop(columns=["cut"]), "lacks feature column")):
        for read in (spec.encode, lambda f: raw_inputs(f, spec)):
            with pytest.raises(BdkError, match=words):
                read(frame)
    refusing = FeatureSpec(spec.columns, missing="refuse")
    with pytest.raises(BdkError, match="--missing refuse"):
        raw_inputs(rows, refusing)
