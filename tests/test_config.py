"""Config: YAML -> typed schema -> CLI overrides; coercion and clear errors."""
import pytest
import yaml

from utils.config import (Config, ConfigError, apply_overrides, build_arg_parser, load_yaml, parse_opts,
                          resolve_config, save_config)


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_number_strings_are_coerced(tmp_path):
    raw = load_yaml(_write(tmp_path, "lr: 5e-4\nweight_decay: 1e-5\nepochs: 3\n"))
    assert raw["lr"] == "5e-4"  # PyYAML (YAML 1.1) leaves this a string
    cfg = apply_overrides(Config(), raw, "c.yaml")
    assert cfg.lr == 0.0005 and isinstance(cfg.lr, float) and cfg.weight_decay == 1e-5 and cfg.epochs == 3


def test_unknown_key_names_the_closest_match(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'noise_rate' in .*c\.yaml.*'noise_ratio'"):
        apply_overrides(Config(), load_yaml(_write(tmp_path, "noise_rate: 0.2\n")), str(tmp_path / "c.yaml"))


@pytest.mark.parametrize("values, message", [
    ({"noise_ratio": 1.5}, r"'noise_ratio' must lie in \[0.0, 1.0\], got 1.5"),
    ({"noise_ratio": -0.1}, r"'noise_ratio' must lie in"),
    ({"epochs": "ten"}, r"'epochs' expects int, got 'ten'"),
    ({"precision": "fp8"}, r"'precision' must be one of \['amp', 'fp32', 'fp16'\]"),
    ({"CLASS_TOKEN_POSITION": "start"}, r"must be one of \['end', 'middle', 'front'\]"),
    ({"num_class": 3, "class_names": ["a", "b"]}, r"num_class is 3 but class_names lists 2"),
    ({"num_class": 2, "class_names": ["a", "a"]}, r"duplicates: \['a'\]"),
    ({"vpt_deep": "maybe"}, r"'vpt_deep' expects bool"),
    ({"warmup": 5, "epochs": 2}, r"warmup \(5\) may not exceed epochs \(2\)"),
])
def test_bad_values_fail_with_key_and_allowed_range(values, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), values, "test")


def test_cli_flags_and_opts_override_yaml_in_order(tmp_path):
    path = _write(tmp_path, "noise_mode: sym\nnoise_ratio: 0.0\nepochs: 10\nlr: 0.03\n")
    parser = build_arg_parser("t", flags=("noise_mode", "noise_ratio"))
    args = parser.parse_args(["--cfg", path, "--noise_mode", "idn", "--noise_ratio", "0.4",
                              "--opts", "epochs=2", "lr=1e-3", "partial=null", "class_names=[a, b]",
                              "num_class=2"])
    cfg = resolve_config(args)
    assert (cfg.noise_mode, cfg.noise_ratio, cfg.epochs, cfg.lr) == ("idn", 0.4, 2, 0.001)
    assert cfg.partial is None and cfg.class_names == ["a", "b"]


def test_paper_flag_out_of_range_is_rejected(tmp_path):
    parser = build_arg_parser("t", flags=("noise_mode", "noise_ratio"))
    args = parser.parse_args(["--cfg", _write(tmp_path, "epochs: 1\n"), "--noise_ratio", "2"])
    with pytest.raises(ConfigError, match="noise_ratio"):
        resolve_config(args)


def test_opts_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_opts(["epochs"])
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_yaml(str(tmp_path / "nope.yaml"))


def test_saved_config_round_trips(tmp_path):
    cfg = apply_overrides(Config(), {"dataset": "cifar100", "lr": "5e-4"}, "t")
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = apply_overrides(Config(), yaml.safe_load((tmp_path / "config.yaml").read_text()), "saved")
    assert again == cfg


@pytest.mark.parametrize("path", ["config/PEFT/cifar100.yaml", "config/FFT/cifar100.yaml",
                                  "config/PEFT/cifar10.yaml", "config/FFT/cifar10.yaml"])
def test_shipped_configs_load_with_official_values(path):
    cfg = apply_overrides(Config(), load_yaml(path), path)
    assert cfg.batch_size == 64 and cfg.epochs == 10 and cfg.warmup == 1 and cfg.seed == 0
    assert cfg.num_class == len(cfg.class_names)
    if "PEFT" in path:
        assert (cfg.lr, cfg.vpt_deep, cfg.vpt_len, cfg.finetune) == (0.03, True, 20, False)
    else:
        assert (cfg.lr, cfg.finetune, cfg.vpt_deep) == (5e-4, True, False)
    if cfg.dataset == "cifar100":
        assert cfg.class_names[39] == "computer_keyboard" and cfg.class_names[0] == "apple"
