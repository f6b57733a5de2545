"""results/paper_numbers.yaml: every number of the paper (arXiv 2409.19696) we recovered, and the loader's checks."""
import pytest
import yaml

from experiments.paper_numbers import PaperNumbersError, load_paper_numbers

# The numbers we recovered of the paper (arXiv 2409.19696, Tables 3, 4, 8), by hand.
EXPECTED = {
    ("cifar100N", "DeFT", "ViT-B/16", "best_acc"): 79.04, ("clothing1m", "DeFT", "ViT-B/16", "best_acc"): 72.44,
    ("webvision", "DeFT", "ViT-B/16", "best_acc"): 85.12, ("clothing1m", "ELR", "ViT-B/16", "best_acc"): 72.14,
    ("cifar100N", "UNICON", "ViT-B/16", "best_acc"): 77.68, ("webvision", "LongReMix", "ViT-B/16", "best_acc"): 84.96,
    ("clothing1m", "CE", "resnet", "best_acc"): 66.02, ("clothing1m", "DeFT", "resnet", "best_acc"): 70.82,
    ("clothing1m", "CE", "mae", "best_acc"): 61.31, ("clothing1m", "DeFT", "mae", "best_acc"): 65.23,
    ("clothing1m", "CE", "convnext", "best_acc"): 68.80, ("clothing1m", "DeFT", "convnext", "best_acc"): 71.68,
    ("cifar100N", "DeFT", "ViT-B/16", "precision"): 88.43,
}


def test_the_shipped_file_holds_exactly_the_recovered_numbers_with_sources():
    paper = load_paper_numbers()
    found = {(n.dataset, n.method, n.backbone, n.metric): n.value for n in paper.numbers}
    assert found == EXPECTED
    assert all(n.noise == "real" for n in paper.numbers)  # no synthetic-noise cell was recovered
    unverified = [n for n in paper.numbers if n.source == "[NB]"]
    assert unverified and all("unverified" in n.note for n in unverified)
    tables = {(n.dataset, n.noise, n.method, n.backbone, n.metric): n.table for n in paper.numbers}
    assert tables[("clothing1m", "real", "DeFT", "resnet", "best_acc")] == "4"
    assert not any(key[:2] == ("cifar100", "sym0.2") for key in tables)  # NOT FOUND stays empty
    assert ("clothing1m", "real", "DeFT", "vit", "best_acc") not in tables
    assert [c["value"] for c in paper.claims] == [4.34, 14]


def _write(tmp_path, numbers):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"numbers": numbers}))
    return str(path)


GOOD = {"table": "3", "dataset": "clothing1m", "noise": "real", "method": "DeFT", "metric": "best_acc",
        "value": 72.44, "source": "[WZ][NB]"}


@pytest.mark.parametrize("change, message", [
    ({"value": 172.0}, "percentage in [0, 100]"),
    ({"metric": "accuracy"}, "metric 'accuracy' is not one of"),
    ({"source": "NB"}, "tags like [NB]"),
    ({"source": "[XX]"}, "tags like [NB]"),
    ({"noise": "symmetric"}, "must look like sym0.2"),
    ({"table": 3}, "quote table numbers"),
    ({"colour": "red"}, "unknown key(s) colour"),
])
def test_bad_entries_are_refused_with_the_entry_named(tmp_path, change, message):
    with pytest.raises(PaperNumbersError, match=r"numbers\[1\]") as err:
        load_paper_numbers(_write(tmp_path, [{**GOOD, **change}]))
    assert message in str(err.value)


def test_a_missing_field_a_repeated_cell_and_a_duplicate_key_are_refused(tmp_path):
    with pytest.raises(PaperNumbersError, match="missing source"):
        load_paper_numbers(_write(tmp_path, [{k: v for k, v in GOOD.items() if k != "source"}]))
    with pytest.raises(PaperNumbersError, match=r"numbers\[2\] repeats the cell of numbers\[1\]"):
        load_paper_numbers(_write(tmp_path, [GOOD, {**GOOD, "value": 1.0}]))
    path = tmp_path / "dup.yaml"
    path.write_text("numbers: []\nnumbers: []\n")
    with pytest.raises(PaperNumbersError, match="duplicate key 'numbers'"):
        load_paper_numbers(str(path))
