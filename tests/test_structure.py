"""The training loop's parts: task registry, renamed config keys, pure losses, label dropout,
monitor timing, logging once per line, the frozen discriminator view."""
import io
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

from ardscale.config import load
from ardscale.diffusion.losses import dit_loss
from ardscale.diffusion.schedule import GaussianDiffusion
from ardscale.engine.deepspeed import frozen
from ardscale.engine.logs import setup_logging
from ardscale.models.dit import DiT, DiTConfig
from ardscale.models.vae_loss import capture_input
from ardscale.monitor import Hook
from ardscale.tasks import TASKS, get_task
from ardscale.train import launch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_task_registry_and_unknown_task(tmp_path):
    assert set(TASKS) == {"dit", "vae"}
    with pytest.raises(ValueError, match=r"task: unknown task 'text'.*\['dit', 'vae'\]"):
        get_task("text")
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [ardscale, _self_]\ntask: text\n")
    with pytest.raises(ValueError, match="task: unknown task 'text'"):
        launch(load(str(bad)))                         # config.load knows no task; launch's preflight does
    cfg = load(str(CONFIGS / "tiny.yaml"), ["data.vae_id=x"])
    assert isinstance(get_task("dit").build_model(cfg),
                      DiT) and get_task("dit").build_discriminator(cfg) is None


PACKAGE = Path(__file__).resolve().parents[1] / "ardscale"


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """``module -> [(imported ardscale module, inside a function?)]`` from the package's source."""
    import ast

    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else name.rsplit(".", 1)[0]
        tree, found = ast.parse(f.read_text()), []
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(x) for fn in functions for x in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            modules = {t for t in targets if t.startswith("ardscale") and _exists(t)}
            found += [(m, id(node) in nested) for m in modules]
        out[name] = found
    return out


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_the_package_has_no_import_circle_and_no_hidden_imports():
    """No module imports another of the package inside a function (to dodge a circle), the import
    graph has no circle, and the layers point one way: train → monitor → evaluate → runs → tasks →
    config, with diffusion/ models/ data/ engine/ metrics/ below them all; nothing imports the
    command-line leaf ``sample``."""
    import graphlib

    imports = _imports()
    hidden = sorted((m, t) for m, ts in imports.items() for t, inside in ts if inside)
    assert hidden == [], hidden
    graph = {m: {t for t, _ in ts if t != m} for m, ts in imports.items()}
    graphlib.TopologicalSorter(graph).static_order()        # raises CycleError naming the circle
    order = ["ardscale.train", "ardscale.monitor", "ardscale.evaluate", "ardscale.runs", "ardscale.tasks",
             "ardscale.config"]
    reach = {}

    def closure(m):
        if m not in reach:
            reach[m] = set()
            for t in graph.get(m, ()):
                reach[m] |= {t} | closure(t)
        return reach[m]

    for i, low in enumerate(order):
        assert not set(order[:i]) & closure(low), f"{low} imports a layer above it"
    assert not [m for m, ts in graph.items() if "ardscale.sample" in ts]
    assert "ardscale.tasks" not in closure("ardscale.config")
    # diffusion/ models/ data/ engine/ metrics/ sit below the whole chain (shared helpers such as
    # cache, weights and cli may sit beside them)
    chain = {*order, "ardscale.sample", "ardscale.drift",
             *(m for m in graph if m.startswith("ardscale.tasks."))}
    below = [m for m in graph if m.split(".")[1:2] in (["diffusion"], ["models"], ["data"], ["engine"],
                                                         ["metrics"])]
    up = {m: sorted(closure(m) & chain) for m in below if closure(m) & chain}
    assert len(below) > 20 and not up, f"the lowest layers import a higher one: {up}"


def test_renamed_keys_fail_naming_the_new_ones_and_old_runs_still_load(tmp_path):
    with pytest.raises(ValueError, match="model is now dit"):
        load(str(CONFIGS / "demo.yaml"), ["data.vae_id=x", "model.depth=2"])
    with pytest.raises(ValueError, match="diffusion.timestep_sampler is now diffusion.timestep_scheduler"):
        load(str(CONFIGS / "demo.yaml"), ["data.vae_id=x", "diffusion.timestep_sampler=naive"])
    with pytest.raises(ValueError, match="vae.latent_tokens is now vae.tokens_per_frame"):
        load(str(CONFIGS / "demo_vae.yaml"), ["vae.latent_tokens=16"])
    old = tmp_path / "old.yaml"
    old.write_text("defaults: [ardscale, _self_]\ntask: dit\ndata: {vae_id: x}\nmodel: {depth: 2}\n"
                   "diffusion: {class_dropout: 0.2}\n")
    with pytest.raises(ValueError,
                       match="model is now dit, diffusion.class_dropout is now dit.class_dropout"):
        load(str(old))
    from ardscale.config import from_dict  # a run dir's config.yaml written before the renames
    cfg = from_dict({"task": "vae", "model": {"depth": 2, "num_timesteps": 1000},
                     "diffusion": {"class_dropout": 0.2}, "vae": {"width": 48, "latent_tokens": 16},
                     "vae_loss": {"gradient": 0.0, "temporal": 1.0, "l1": 0.5}})   # removed since: dropped
    got = (cfg.dit.depth, cfg.dit.class_dropout, cfg.vae.hidden_size, cfg.vae.tokens_per_frame,
           cfg.vae_loss.l1)
    assert got == (2, 0.2, 48, 16, 0.5)
    with pytest.raises(Exception, match="Could not override 'vae_loss.gradient'"):   # new configs may not
        load(str(CONFIGS / "demo_vae.yaml"), ["vae_loss.gradient=1"])


def test_label_dropout_lives_in_the_dit():
    model = DiT(DiTConfig.tiny(class_dropout=1.0))
    emb = model.y_embedder
    y = torch.tensor([1, 2, 3])
    null = emb.weight[10]
    drop = torch.tensor([True, False, True])
    out = emb(y, drop)
    assert torch.equal(out[0], null) and torch.equal(out[2], null) and torch.equal(out[1], emb.weight[2])
    assert torch.equal(emb.eval()(y), emb.weight[y])                  # eval: no dropout
    assert all(torch.equal(r, null) for r in emb.train()(y))          # training, p = 1: all dropped


def test_dit_loss_is_pure_and_matches_its_definition():
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny())
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    diffusion = GaussianDiffusion()
    x0, noise = torch.randn(2, 3, 32, 4), torch.randn(2, 3, 32, 4)
    t, y, drop = torch.tensor([[5, 300, 900], [0, 0, 999]]), torch.tensor([1, 2]), torch.tensor([False, True])
    loss, per_frame = dit_loss(model, diffusion, x0, y, t, noise, drop)
    pred = model(diffusion.q_sample(x0, t, noise), t, torch.tensor([1, 10]))   # label 10: the null class
    assert per_frame.shape == (2, 3) and torch.allclose(per_frame, (pred - x0).pow(2).mean(dim=(2, 3)),
                                                        atol=1e-6)
    assert torch.isclose(loss, per_frame.mean(), atol=1e-7)
    assert all(p.grad is None for p in model.parameters())            # it computes; backward is the caller's


def test_hooks_decide_their_own_timing():
    h = Hook()
    h.every = 3
    assert [s for s in range(1, 8) if h.should_run(s, last=s == 7)] == [3, 6, 7]
    h.every = 0
    assert not any(h.should_run(s, last=True) for s in range(1, 4))


def test_rank_filtered_logging_prints_each_line_once(capsys):
    root_stream = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(root_stream))   # as Ray's own handler
    try:
        setup_logging(0)
        setup_logging(0)                                                # twice: still one handler
        logging.getLogger("ardscale.train").info("step 1 loss 0.5")
        setup_logging(1)
        logging.getLogger("ardscale.train").info("hidden on rank 1")
        logging.getLogger("ardscale.train").warning("kept", extra={"all_ranks": True})
    finally:
        setup_logging(0)
    out = capsys.readouterr().out
    assert out.count("step 1 loss 0.5") == 1 and "hidden" not in out and "WARNING [rank 1] kept" in out
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO step 1 loss 0.5$", out.splitlines()[0])
    assert root_stream.getvalue() == ""


def test_frozen_view_keeps_gradients_off_the_discriminator_and_capture_input_cleans_up():
    disc = torch.nn.Linear(3, 1)
    x = torch.randn(4, 3, requires_grad=True)
    frozen(disc)(x).sum().backward()
    assert x.grad is not None and disc.weight.grad is None and disc.weight.requires_grad
    conv = torch.nn.Conv2d(2, 2, 3)
    with capture_input(conv) as box:
        conv(torch.ones(1, 2, 5, 5))
    assert torch.equal(box["input"], torch.ones(1, 2, 5, 5)) and not conv._forward_hooks


def test_shipped_stage_configs_chain(tmp_path):
    """The AR-VAE stage configs form the paper's chain and the demo DiT fits the demo VAE's latents."""
    def cfg(name):
        text = (CONFIGS / f"{name}.yaml").read_text()
        w = tmp_path / "w.pth"
        w.write_bytes(b"")
        lp = [f"vae_loss.perceptual_vgg={w}",
              f"vae_loss.perceptual_lin={w}"] if "perceptual: 1" in text else []
        return load(str(CONFIGS / f"{name}.yaml"), ["data.vae_id=x", *lp]), yaml.safe_load(text)
    for prefix, stages in (("demo_vae", ["demo_vae_frames", "demo_vae_gan", "demo_vae"]),
                           ("ucf101_vae", ["ucf101_vae_s1", "ucf101_vae_s2", "ucf101_vae_s3"])):
        c1, c2, c3 = (cfg(n)[0] for n in stages)
        assert [c.vae.temporal for c in (c1, c2, c3)] == [False, False, True], prefix
        assert c1.vae.pixel_head == c2.vae.pixel_head == c3.vae.pixel_head, prefix   # init_from loads them
        assert c1.vae_loss.adversarial == 0 < c2.vae_loss.adversarial, prefix
        assert c1.data.clip_frames == 1 and c3.data.clip_frames != 1, prefix
        assert Path(c2.train.init_from).name == Path(c1.train.run_dir).name, prefix
        assert Path(c3.train.init_from).name == Path(c2.train.run_dir).name, prefix
    dit, vae = cfg("demo")[0], cfg("demo_vae")[0]
    assert (dit.dit.tokens_per_frame, dit.dit.latent_dim) == (vae.vae.tokens_per_frame, vae.vae.latent_dim)
    assert dit.data.root == vae.data.root


def test_moved_names_fail_naming_their_new_place():
    with pytest.raises(ImportError, match="tasks.load_trained moved: use ardscale.runs.load_trained"):
        from ardscale.tasks import load_trained  # noqa: F401
    with pytest.raises(ImportError, match=r"sample.default_prompts moved: use ardscale.runs.RunData\(cfg\)"):
        from ardscale.sample import default_prompts  # noqa: F401
    import ardscale.tasks
    assert not hasattr(ardscale.tasks, "no_such_name")      # other names: a plain AttributeError


def test_checkpoint_tags_and_their_steps_round_trip():
    from ardscale.engine import checkpoint

    assert checkpoint.tag(1234) == "step-00001234" and checkpoint.step_of("step-00001234") == 1234
    for bad in ("latest", "step-", "step-12a", "ckpt-00000001"):
        with pytest.raises(ValueError, match="is not a checkpoint tag"):
            checkpoint.step_of(bad)
