"""Grids and the sweep runner: grids -> the paper's commands, their order and jobs, running, skipping, failing."""
import os
import sys
import threading

import pytest
import yaml

from experiments import grid as grids
from experiments import sweep
from experiments.grid import GridError, expand_grid, load_grid
from experiments.sweep import job_lines, ordered_commands, run_commands, run_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRIDS = os.path.join(ROOT, "grids")


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # grid paths are relative to the repository root, as the paper's commands


def _readme_commands() -> set[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return {" ".join(line.split()) for line in handle if line.startswith("python main_")}


def _texts(path: str) -> list[str]:
    return [c.text() for c in ordered_commands(load_grid(path).cells)]


def test_shipped_grids_expand_to_the_readme_paper_commands(in_repo):
    readme = _readme_commands()
    literal = {  # grid -> command lines of README.md ("The paper's commands", "Baselines"), + --continue
        "table1.yaml": ["python main_small_loss.py --cfg ./config/PEFT/cifar100.yaml --noise_mode sym "
                        "--noise_ratio 0.2",
                        "python main_baseline.py --cfg ./config/PEFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 "
                        "--lnl_methods LabelMatch",
                        "python main_phase1.py --cfg ./config/PEFT/cub200.yaml --noise_mode idn --noise_ratio 0.3"],
        "table2.yaml": ["python main_phase1.py --cfg ./config/PEFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2",
                        "python main_phase2.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2",
                        "python main_phase1.py --cfg ./config/PEFT/cifar100.yaml --noise_mode idn --noise_ratio 0.2",
                        "python main_phase2.py --cfg ./config/FFT/cifar100.yaml --noise_mode idn --noise_ratio 0.2",
                        "python main_baseline.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 "
                        "--lnl_methods GMM"],
        "table3.yaml": ["python main_real_phase1.py --cfg ./config/PEFT/clothing1m.yaml",
                        "python main_real_phase2.py --cfg ./config/FFT/clothing1m.yaml",
                        "python main_real_baseline.py --cfg ./config/FFT/clothing1m.yaml --lnl_methods ELR"],
    }
    for grid, lines in literal.items():
        texts = _texts(os.path.join(GRIDS, grid))
        for line in lines:
            assert line in readme, f"README.md no longer has {line!r}"
            assert f"{line} --continue" in texts, f"{grid} lacks {line!r}"


def test_shipped_grids_cover_the_papers_settings(in_repo):
    counts = {}
    for name in ("table1", "table2", "table3", "table4", "figure3"):
        grid = load_grid(os.path.join(GRIDS, f"{name}.yaml"))
        counts[name] = (len(grid.cells), len(ordered_commands(grid.cells)))
        assert {c.seed for c in grid.cells} == {0}  # the paper's single runs; seeds 1, 2 are the careful option
    # Table 1: 4 datasets x 6 noise settings x 3 detectors; Table 2: x (4 baselines + DeFT's two phases)
    assert counts["table1"] == (72, 72) and counts["table2"] == (120, 144)
    assert counts["table3"] == (15, 18)  # 3 real-noise datasets x 5 methods (DeFT = 2 commands)
    assert counts["table4"] == (20, 21)  # 4 backbones x 5 methods; DeFT's phase 1 runs once for the 4 phase 2s
    assert counts["figure3"] == (48, 72)  # 24 settings x {phase 1, FFT phase 2, PEFT phase 2}
    table1 = load_grid(os.path.join(GRIDS, "table1.yaml")).cells
    assert {c.noise for c in table1} == {"sym0.2", "sym0.4", "sym0.6", "idn0.2", "idn0.3", "idn0.4"}
    assert {c.dataset for c in table1} == {"cifar100", "tiny_imagenet", "stanford_cars", "cub200"}
    table4 = _texts(os.path.join(GRIDS, "table4.yaml"))
    assert "python main_real_turn.py --cfg ./config/FFT/clothing1m.yaml --backbone convnext " \
           "--continue" in table4
    assert "python main_real_phase2.py --cfg ./config/FFT/clothing1m.yaml --backbone mae --continue" in table4


def test_backbone_weights_and_the_readme_table4_command(in_repo):
    grid = expand_grid({"datasets": ["clothing1m"], "methods": ["DeFT"],
                        "backbones": {"resnet": ["weights_path=./model/weights/resnet.pth"]}})
    phase1, phase2 = ordered_commands(grid.cells)
    line = "python main_real_phase2.py --cfg ./config/FFT/clothing1m.yaml --backbone resnet --opts " \
           "weights_path=./model/weights/resnet.pth"
    assert line in _readme_commands() and phase2.text() == f"{line} --continue"
    assert phase1.text() == "python main_real_phase1.py --cfg ./config/PEFT/clothing1m.yaml --continue"
    assert phase2.requires == (phase1.key,)
    assert phase2.run_dir == os.path.join("output", "real_phase2_resnet", "clothing1m", "seed0")


def test_phase1_runs_before_the_phase2_that_reads_its_mask(in_repo):
    grid = expand_grid({"datasets": ["cifar100"], "noise": ["sym0.2", "idn0.4"], "seeds": [0, 1],
                        "methods": ["CE", "DeFT", "GMM+FFT", "DeFT-PEFT"]})
    commands = ordered_commands(grid.cells)
    position = {c.key: i for i, c in enumerate(commands)}
    for command in commands:
        assert all(position[k] < position[command.key] for k in command.requires)
    assert len(commands) == 2 * 2 * 6  # CE, phase 1, phase 2, GMM, phase 2 from GMM, PEFT phase 2
    from_gmm = [c for c in commands if "--clean_mask" in c.args][0]
    assert from_gmm.text() == ("python main_phase2.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio "
                               "0.2 --clean_mask output/baseline_gmm/cifar100/sym0.2_seed0/clean_mask.npy --continue")
    assert from_gmm.run_dir == os.path.join("output", "phase2_from_gmm", "cifar100", "sym0.2_seed0")
    seed1 = [c for c in commands if c.script == "main_phase2.py" and "seed=1" in c.args and "idn" in c.args]
    assert [c.text() for c in seed1] == [
        "python main_phase2.py --cfg ./config/FFT/cifar100.yaml --noise_mode idn --noise_ratio 0.4 --opts seed=1 "
        "--continue",
        "python main_phase2.py --cfg ./config/FFT/cifar100.yaml --noise_mode idn --noise_ratio 0.4 --clean_mask "
        "output/baseline_gmm/cifar100/idn0.4_seed1/clean_mask.npy --opts seed=1 --continue",
        "python main_phase2.py --cfg ./config/PEFT/cifar100.yaml --noise_mode idn --noise_ratio 0.4 --opts seed=1 "
        "--continue"]
    assert seed1[2].run_dir == os.path.join("output", "phase2_peft", "cifar100", "idn0.4_seed1")


def test_print_one_line_per_job_with_and_without_torchrun(in_repo, capsys):
    assert sweep.main([os.path.join(GRIDS, "figure3.yaml"), "--print", "--only", "cub200/sym0.4/*"]) == 0
    p1 = "main_phase1.py --cfg ./config/PEFT/cub200.yaml --noise_mode sym --noise_ratio 0.4 --continue"
    fft = "main_phase2.py --cfg ./config/FFT/cub200.yaml --noise_mode sym --noise_ratio 0.4 --continue"
    peft = "main_phase2.py --cfg ./config/PEFT/cub200.yaml --noise_mode sym --noise_ratio 0.4 --continue"
    assert capsys.readouterr().out == f"python {p1} && python {fft} && python {peft}\n"  # shared phase 1: one job
    assert sweep.main([os.path.join(GRIDS, "figure3.yaml"), "--print", "--torchrun", "4",
                       "--only", "cub200/sym0.4/*"]) == 0
    run = "torchrun --standalone --nproc_per_node 4"
    assert capsys.readouterr().out == f"{run} {p1} && {run} {fft} && {run} {peft}\n"
    grid = expand_grid({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["GMM", "GMM+FFT", "CE"]})
    lines = job_lines(grid.cells)
    assert len(lines) == 2 and lines[0].count(" && ") == 1 and "--lnl_methods CE" in lines[1]


def test_dry_run_lists_each_command_with_what_would_happen(in_repo, capsys):
    assert sweep.main([os.path.join(GRIDS, "table3.yaml"), "--dry_run", "--only", "webvision/*/DeFT"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "start"
    assert out[0].endswith("python main_real_phase1.py --cfg ./config/PEFT/webvision.yaml --continue")
    assert out[-1] == "1 cells, 2 commands"


# ---------------------------------------------------------------- running (a fake executor, tiny YAMLs)
@pytest.fixture
def tiny_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for kind in ("PEFT", "FFT"):
        (tmp_path / f"{kind}.yaml").write_text(yaml.safe_dump({"dataset": "cifar10", "seed": 0,
                                                               "output_dir": str(tmp_path / "output")}))
    grid = {"datasets": [{"name": "c10", "peft": "./PEFT.yaml", "fft": "./FFT.yaml"}],
            "noise": ["sym0.2", "sym0.4"], "methods": ["DeFT", "CE"]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    return tmp_path


def _finish(run_dir):
    os.makedirs(run_dir, exist_ok=True)
    open(os.path.join(run_dir, "summary.json"), "w").write("{}")


def test_running_skips_finished_resumes_interrupted_and_goes_on_past_a_failure(tiny_grid, capsys):
    out = tiny_grid / "output"
    _finish(out / "phase1" / "cifar10" / "sym0.2_seed0")  # finished: no process is started
    interrupted = out / "baseline_ce" / "cifar10" / "sym0.4_seed0"
    interrupted.mkdir(parents=True)
    (interrupted / "checkpoint.pt").write_bytes(b"x")  # interrupted: run again with --continue (resumes)
    calls = []

    def execute(command, torchrun):
        calls.append(command.text())
        if command.script == "main_phase1.py" and "0.4" in command.args:
            return 2, "error: CIFAR-10 not found under ./data (expected ...)"
        _finish(command.run_dir)
        return 0, ""

    assert sweep.main([str(tiny_grid / "grid.yaml")], execute=execute) == 1
    assert calls == [
        "python main_phase2.py --cfg ./FFT.yaml --noise_mode sym --noise_ratio 0.2 --continue",
        "python main_baseline.py --cfg ./FFT.yaml --noise_mode sym --noise_ratio 0.2 --lnl_methods CE --continue",
        "python main_phase1.py --cfg ./PEFT.yaml --noise_mode sym --noise_ratio 0.4 --continue",
        "python main_baseline.py --cfg ./FFT.yaml --noise_mode sym --noise_ratio 0.4 --lnl_methods CE --continue"]
    text = capsys.readouterr().out
    assert f"[1/6] finished already ({out / 'phase1' / 'cifar10' / 'sym0.2_seed0'})" in text
    assert "[6/6] resume: python main_baseline.py --cfg ./FFT.yaml --noise_mode sym --noise_ratio 0.4" in text
    assert "[5/6] skipped (a prerequisite failed): python main_phase2.py" in text
    assert "sweep: 6 commands: 3 ran, 1 already finished, 1 failed, 1 skipped" in text
    failed = text.split("failed cells (1):\n")[1].splitlines()
    assert failed[0] == "  c10/sym0.4/seed0/clip/DeFT: python main_phase1.py --cfg ./PEFT.yaml --noise_mode sym " \
                        "--noise_ratio 0.4 --continue"
    assert failed[1].strip().startswith("exit 2: error: CIFAR-10 not found") and "log.txt" in failed[1]
    assert failed[2] == "      not run: python main_phase2.py --cfg ./FFT.yaml --noise_mode sym --noise_ratio 0.4 " \
                        "--continue"
    calls.clear()  # the failure fixed: the same sweep does only what is left
    assert sweep.main([str(tiny_grid / "grid.yaml")], execute=lambda c, t: (calls.append(c.text()), _finish(c.run_dir),
                                                                              (0, ""))[-1]) == 0
    assert [c.split()[1] for c in calls] == ["main_phase1.py", "main_phase2.py"]


def test_parallel_jobs_run_at_once_keep_each_jobs_order_and_report_as_the_sequential_sweep(tiny_grid, capsys,
                                                                                           monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the sweep sets it for its children; undone after
    started, lock = [], threading.Lock()
    both_running = threading.Barrier(2, timeout=20)  # times out unless two jobs really run at the same time

    def execute(command, torchrun):
        for key in command.requires:  # a phase 2 starts only once its phase 1 has finished
            assert os.path.isfile(os.path.join(dict(keys)[key], "summary.json"))
        with lock:
            started.append(command.text())
        if command.script == "main_phase1.py":
            both_running.wait()  # the two phase 1s (one per noise setting: two jobs) overlap
        if "0.4" in command.args and command.script == "main_baseline.py":
            return 1, "error: boom"
        _finish(command.run_dir)
        return 0, ""

    keys = [(c.key, c.run_dir) for c in ordered_commands(load_grid(str(tiny_grid / "grid.yaml")).cells)]
    assert sweep.main([str(tiny_grid / "grid.yaml"), "--jobs", "2"], execute=execute) == 1
    assert sorted(started) == sorted(c.text() for c in ordered_commands(load_grid(str(tiny_grid / "grid.yaml")).cells))
    for noise in ("0.2", "0.4"):
        mine = [c.split()[1] for c in started if f"--noise_ratio {noise}" in c]
        assert mine.index("main_phase1.py") < mine.index("main_phase2.py")
    text = capsys.readouterr().out
    assert "6 commands, 2 jobs at a time" in text
    assert "sweep: 6 commands: 5 ran, 0 already finished, 1 failed, 0 skipped" in text
    assert "  c10/sym0.4/seed0/clip/CE: python main_baseline.py" in text
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


def test_jobs_must_be_positive(tiny_grid, capsys):
    assert sweep.main([str(tiny_grid / "grid.yaml"), "--jobs", "0"], execute=lambda c, t: (0, "")) == 2
    assert "error: --jobs expects a number of parallel jobs >= 1, got 0" in capsys.readouterr().err


def test_every_cell_holding_a_failed_command_is_listed(tiny_grid):
    grid = expand_grid({"datasets": [{"name": "c10", "peft": "./PEFT.yaml", "fft": "./FFT.yaml"}],
                        "noise": ["sym0.2"], "methods": ["DeFT-phase1", "DeFT"]})  # both cells share phase 1
    outcomes = run_commands(ordered_commands(grid.cells), execute=lambda c, t: (1, "Traceback: boom"),
                            log=lambda _: None)
    assert [o.status for o in outcomes] == ["failed", "skipped"]
    text, ok = sweep.report(grid.cells, outcomes)
    assert not ok and "failed cells (2):" in text
    assert "  c10/sym0.2/seed0/clip/DeFT-phase1: python main_phase1.py" in text
    assert "  c10/sym0.2/seed0/clip/DeFT: python main_phase1.py" in text and "not run: python main_phase2.py" in text


def test_run_process_returns_the_exit_code_and_the_error_line(capfd):
    code = "import sys; print('working'); print('error: no data', file=sys.stderr); sys.exit(2)"
    assert run_process([sys.executable, "-c", code]) == (2, "error: no data")
    captured = capfd.readouterr()
    assert captured.out == "working\n" and captured.err == "error: no data\n"  # both still reach the terminal
    assert run_process([sys.executable, "-c", "pass"]) == (0, "")


def test_torchrun_launch_in_the_runner(monkeypatch, in_repo):
    seen = []
    monkeypatch.setattr(sweep, "run_process", lambda argv: (seen.append(argv), (0, ""))[-1])
    command = ordered_commands(expand_grid({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["CE"]}).cells)[0]
    sweep.subprocess_executor(command, torchrun=2)
    assert seen[0][:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert seen[0][6:] == [os.path.join(ROOT, "main_baseline.py"), *command.args, "--continue"]


# ---------------------------------------------------------------- the miniature's grid format
def test_the_format_holds_the_miniature_grid(in_repo):
    demo = {"name": "fashion_mnist", "peft": "./config/demo/PEFT/fashion_mnist.yaml",
            "fft": "./config/demo/FFT/fashion_mnist.yaml"}
    miniature = {
        "output_dir": "output/miniature", "opts": ["max_train_samples=2000"], "seeds": [0, 1, 2], "datasets": [demo],
        "method_opts": {"LabelMatch": ["label_match_templates=simple"]},
        "experiments": [
            {"noise": {"sym": [0.2, 0.4, 0.6, 0.8], "idn": [0.2, 0.3, 0.4, 0.5]},
             "methods": ["DeFT", "LabelMatch", "SmallLoss", "GMM", "TURN", "CE", "ELR", "SCE"]},
            {"noise": ["sym0.4", "idn0.3"], "methods": ["DeFT-PEFT"]}]}
    grid = expand_grid(miniature)
    assert len(grid.cells) == 8 * 3 * 8 + 2 * 3
    commands = ordered_commands(grid.cells)
    assert len(commands) == 8 * 3 * 9 + 2 * 3  # the ablation's phase 1 is the first block's DeFT phase 1
    texts = [c.text() for c in commands]
    assert ("python main_baseline.py --cfg ./config/demo/PEFT/fashion_mnist.yaml --noise_mode idn --noise_ratio 0.5 "
            "--lnl_methods LabelMatch --opts max_train_samples=2000 label_match_templates=simple seed=2 "
            "output_dir=output/miniature --continue") in texts
    assert ("python main_phase2.py --cfg ./config/demo/PEFT/fashion_mnist.yaml --noise_mode sym --noise_ratio 0.4 "
            "--opts max_train_samples=2000 output_dir=output/miniature --continue") in texts
    assert commands[0].run_dir == os.path.join("output/miniature", "phase1", "fashion_mnist", "sym0.2_seed0")
    # other opts for the ablation's phase 1 would write the first block's phase-1 run directory: refused
    miniature["experiments"][1]["opts"] = ["epochs=2"]
    with pytest.raises(GridError, match="two different commands write to output/miniature/phase1/fashion_mnist/"
                                        "sym0.4_seed0"):
        expand_grid(miniature)


# ---------------------------------------------------------------- bad grids
@pytest.mark.parametrize("grid, message", [
    ({"dataset": ["cifar100"]}, "unknown key 'dataset' (did you mean 'datasets'?)"),
    ({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["Deft"]},
     "unknown method 'Deft' (did you mean 'DeFT'?)"),
    ({"datasets": ["cifar1000"], "noise": ["sym0.2"], "methods": ["CE"]}, "unknown dataset 'cifar1000'"),
    ({"datasets": ["cifar100"], "noise": ["symmetric"], "methods": ["CE"]}, "is not a noise setting like sym0.2"),
    ({"datasets": ["cifar100"], "noise": ["flip0.2"], "methods": ["CE"]}, "unknown noise mode 'flip'"),
    ({"datasets": ["cifar100"], "noise": {"sym": [1.5]}, "methods": ["CE"]}, "outside [0, 1]"),
    ({"datasets": ["cifar100"], "methods": ["CE"]}, "give noise settings"),
    ({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["CE"], "opts": ["seed=3"]},
     "set by the grid's 'seeds'"),
    ({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["CE"], "opts": ["epoch=3"]},
     "'epoch' is not a config key (did you mean 'epochs'?)"),
    ({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["SmallLoss"], "backbones": ["resnet"]},
     "method SmallLoss trains no backbone"),
    ({"datasets": [{"name": "x", "peft": "./nowhere.yaml"}], "noise": ["sym0.2"], "methods": ["SmallLoss"]},
     "config YAML ./nowhere.yaml not found"),
    ({"datasets": [{"name": "x", "peft": "./config/PEFT/cifar100.yaml"}], "noise": ["sym0.2"], "methods": ["CE"]},
     "needs the FFT YAML of dataset 'x'"),
    ({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["CE"], "seeds": [0, -1]}, "integers >= 0"),
    ({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["CE"], "experiments": []}, "non-empty list"),
    ({"datasets": ["cifar100"], "noise": ["sym0.2"], "methods": ["CE"], "experiments": [{"method": ["CE"]}]},
     "experiments[1]: unknown key 'method'"),
])
def test_bad_grids_fail_with_what_was_expected(in_repo, grid, message):
    with pytest.raises(GridError) as err:
        expand_grid(grid, "g.yaml")
    assert message in str(err.value)


def test_bad_grid_files_exit_2_with_one_error_line(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text("methods: [CE]\nmethods: [GMM]\n")
    assert sweep.main([str(path), "--print"]) == 2
    assert capsys.readouterr().err.startswith(f"error: grid {path}: duplicate key 'methods'")
    assert sweep.main([str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_known_noise_modes_and_backbones_match_the_code():
    from datasets.noise import NOISE_MODES
    from models.timm_backbones import OFFICIAL_TIMM_BACKBONES

    assert set(grids.NOISE_MODES) == set(NOISE_MODES) - {"none"}
    assert set(grids.TIMM_ALIASES) == set(OFFICIAL_TIMM_BACKBONES)
    assert grids.parse_noise(["asym_cifar1000.4", "asym_cifar100.4", "sym1"]) == \
        [("asym_cifar100", 0.4), ("asym_cifar10", 0.4), ("sym", 1.0)]


def test_the_sister_methods_grid_names_each_block_count_and_runs_coreg_once_per_seed(in_repo):
    grid = load_grid(os.path.join(GRIDS, "sister_methods.yaml"))
    rs = [c for c in grid.cells if c.method.startswith("RobustSimilarity")]
    assert {c.method for c in rs} == {"RobustSimilarity (m=1)", "RobustSimilarity (m=2)", "RobustSimilarity (m=4)"}
    assert len(rs) == 3 * 2 * 2  # m x noise x seeds: every m is its own cell, never merged with another m
    for cell in rs:
        (command,) = cell.commands
        m = cell.method[len("RobustSimilarity (m="):-1]
        assert command.script == "main_robust_similarity.py" and f"rs_blocks={m}" in command.args
        assert command.run_dir.split(os.sep)[-3] == f"robust_similarity_m{m}"  # m in the run name
    coreg = [c for c in grid.cells if c.method == "CoReg"]
    assert [(c.noise, c.seed) for c in coreg] == [("clip_annotation", 0), ("clip_annotation", 1)]
    assert all("--noise_mode" not in c.commands[0].args for c in coreg)  # CLIP's labels, not the noise grid
    assert coreg[0].commands[0].run_dir == os.path.join("./output/sister_methods", "coreg", "fashion_mnist",
                                                        "none0.0_seed0")
