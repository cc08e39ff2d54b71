"""The pipeline on a real clip, stage by stage over module-scoped fixtures (a failing stage fails
its own tests only): VAE run → tools/encode_latents.py (Ray Data actor pool) → DiT run →
ardscale.sample / ardscale.evaluate / tools/ablate.py; and a text DiT on captioned latents."""
import importlib.util
import json
import math
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest

from ardscale.config import load
from ardscale.data.loader import load_video_clips
from ardscale.data.shards import list_shards, load_npy, load_npz, read_shard, write_shard
from ardscale.data.sources import VideoItem
from ardscale.data.video import decode_mp4
from ardscale.evaluate import evaluate
from ardscale.metrics.fvd import main as fvd_floor
from ardscale.metrics.local import LocalNetConfig, save_local, train_local
from ardscale.runs import mlflow_run_id
from ardscale.sample import SampleJob, generate
from ardscale.train import launch
from data_prep.shard_videos import shard_one
from tools.ablate import main as ablate
from tools.encode_latents import run as encode_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLIP = ("Archery", "v_Archery_g01_c01")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def clip(ucf_root):
    return ucf_root / "videos" / CLIP[0] / f"{CLIP[1]}.avi"


@pytest.fixture(scope="module")
def vae_run(work, clip):
    """3 captioned 4-frame clips at 32² in shard 0; shard 1 holds the same clip without a caption
    and a corrupt sample; a 1-step AR-VAE run on them."""
    root = work / "data"
    videos = root / "videos" / "train"
    shard_one([VideoItem(str(clip), 2, *CLIP, "an archer draws the bow")], str(videos / "shard-000000.tar"),
              num_frames=4, fps=8, size=32, max_clips=3, split="train")
    good = next(read_shard(str(videos / "shard-000000.tar")))
    write_shard(str(videos / "shard-000001.tar"), [
        {"__key__": "ok", "mp4": good["mp4"],   # the same clip, without a caption
         "json": {k: v for k, v in json.loads(good["json"]).items() if k != "caption"}},
        {"__key__": "corrupt", "mp4": b"\x00\x00not an mp4", "json": good["json"]}])
    run = str(work / "vae")
    launch(load(str(CONFIGS / "demo_vae_frames.yaml"), [
        f"data.root={root}", f"train.run_dir={run}", "train.steps=1", "scale.num_workers=0",
        "vae.image_size=32", "vae.hidden_size=32", "vae.depth=1", "vae.pixel_channels=8",
        "optim.micro_batch_size=2", f"tracking.tracking_uri=sqlite:///{work}/mlruns.db"]))
    return run, root


@pytest.fixture(scope="module")
def latents(vae_run, ray_local):
    """The encode job run twice: whole, then again after one shard's sidecar was lost."""
    run, root = vae_run
    first = encode_run(run, str(root), "train", num_actors=2)
    # as if killed mid-job
    (root / "latents" / first["vae_id"] / "train" / "shard-000001.stats.json").unlink()
    again = encode_run(run, str(root), "train", num_actors=2)
    return first, again


@pytest.fixture(scope="module")
def local(vae_run, work):
    """A local feature net trained on the real clips, for fvd_local during training and after."""
    clips = load_video_clips(str(vae_run[1]), "train")
    path = str(work / "local.pt")
    net, report = train_local(clips, clips, LocalNetConfig(width=8, stages=2, image_size=32), epochs=1,
                              batch_size=2, progress=False)
    save_local(net, report, path)
    return path


@pytest.fixture(scope="module")
def std(work, clip, local):
    """9-frame clips of the same video, the real set of the standard metrics (FVD9: the I3D's
    least), and the evaluate overrides that use them."""
    root9 = work / "data9"
    shard_one([VideoItem(str(clip), 2, *CLIP)], str(root9 / "videos" / "train" / "shard-000000.tar"),
              num_frames=9, fps=8, size=32, max_clips=3, split="train")
    return root9, [f"local={local}", "split=train", "fvd_frames=9", f"real_root={root9}", "references=train",
                   "fid_frames=1", "mlflow=false"]


@pytest.fixture(scope="module")
def dit_run(work, vae_run, latents, local):
    """A 2-step class DiT with its sample grid, EMA and fvd_local evaluation on."""
    run = str(work / "dit")
    launch(load(str(CONFIGS / "demo.yaml"), [
        f"data.root={vae_run[1]}", f"data.vae_id={latents[0]['vae_id']}", f"train.run_dir={run}",
        "train.steps=2", "train.sample_every=2", "optim.ema_decay=0.9", "train.eval_every=1",
        f"eval.local={local}", "eval.split=train", "eval.per_class=2", "eval.sample.steps=2",
        "scale.num_workers=0", "dit.hidden_size=32", "dit.depth=1", "optim.micro_batch_size=2",
        f"tracking.tracking_uri=sqlite:///{work}/mlruns.db"]))
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns.db")
    return run


def test_encode_latents_skips_corrupt_clips_and_resumes(vae_run, latents):
    root = vae_run[1]
    m, again = latents
    assert (m["shards"], m["shards_encoded_now"], m["clips"]) == (2, 2, 4)
    assert len(m["failed"]) == 1 and "corrupt" in m["failed"][0]
    assert m["num_frames"] == 4 and m["latent_std"] > 0
    # The latent contract: every stored token has norm √D (the demo's D; float16 rounding aside).
    D = load(str(CONFIGS / "demo_vae_frames.yaml")).vae.latent_dim
    norm = D ** 0.5
    assert m["token_norm_expected"] == pytest.approx(norm) and abs(m["token_norm_mean"] - norm) < 2e-3
    assert norm - 6e-3 < m["token_norm_min"] <= m["token_norm_max"] < norm + 6e-3
    out = list_shards(str(root / "latents" / m["vae_id"] / "train"))
    assert [u.rsplit("/", 1)[-1] for u in out] == ["shard-000000.tar", "shard-000001.tar"]
    first = list(read_shard(out[0]))
    assert [s["__key__"] for s in first] == [f"{CLIP[1]}-{k:03d}" for k in range(3)]
    z = load_npy(first[0]["npy"])
    assert z.shape == (4, 32, D) and z.dtype == np.float16
    assert json.loads(first[1]["json"])["label"] == 2
    assert again["shards_encoded_now"] == 1, "a complete shard was encoded again"
    assert (again["clips"], again["failed"], again["num_frames"]) == (m["clips"], m["failed"], 4)
    assert abs(again["latent_std"] - m["latent_std"]) < 1e-6


def test_encode_in_process_without_ray_writes_the_same_shards(vae_run, latents, work):
    """``--num-actors 0`` (no Ray): the same latents, failures and manifest counts as the actor pool."""
    run, root = vae_run
    bare = work / "data_bare"
    shutil.copytree(root / "videos", bare / "videos")
    m, ray_m = encode_run(run, str(bare), "train", num_actors=0), latents[0]
    for key in ("vae_id", "shards", "shards_encoded_now", "clips", "num_frames"):
        assert m[key] == ray_m[key], key
    assert m["failed"] == [f.replace(str(root), str(bare)) for f in ray_m["failed"]]
    assert m["latent_std"] == pytest.approx(ray_m["latent_std"], abs=1e-6)

    def shard(at, name):
        url = str(at / "latents" / m["vae_id"] / "train" / name)
        return {s["__key__"]: load_npy(s["npy"]) for s in read_shard(url)}

    for name in ("shard-000000.tar", "shard-000001.tar"):
        here, there = shard(bare, name), shard(root, name)
        assert here.keys() == there.keys() and all(np.array_equal(here[k], there[k]) for k in here)


@pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                    reason="MiniLM package not installed")
def test_captions_encoded_into_latents_train_a_text_dit(vae_run, latents, local, std, work):
    """Captions encoded into the latent shards (MiniLM) with the null caption, in a copy of the
    data root; a text DiT trained on them, sampled from prompts and evaluated on held-out captions."""
    run, root = vae_run
    troot = work / "data_text"
    shutil.copytree(root, troot)
    m = latents[0]
    texted = encode_run(run, str(troot), "train", num_actors=1, text_encoder_kind="minilm", text_tokens=8)
    assert texted["shards_encoded_now"] == 2, "latents without text must be encoded again"
    assert texted["text"] == {"encoder": "minilm", "path": "", "tokens": 8, "dim": 384}
    where = troot / "latents" / m["vae_id"] / "train"
    null = load_npz((where / "_null_caption.npz").read_bytes())
    rows = {s["__key__"]: s for u in list_shards(str(where)) for s in read_shard(u)}
    archer, plain = load_npz(rows[f"{CLIP[1]}-000"]["txt.npz"]), load_npz(rows["ok"]["txt.npz"])
    assert archer["tokens"].shape == (8, 384) and archer["tokens"].dtype == np.float16
    assert archer["mask"].sum() == 7 and null["mask"].sum() == 2    # [CLS] an archer draws the bow [SEP]
    assert (plain["mask"] == null["mask"]).all()                     # no caption: the null caption
    assert all(np.abs(plain[k].astype(np.float32) - null[k]).max() < 1e-2 for k in ("tokens", "pooled"))
    assert np.abs(archer["pooled"].astype(np.float32) - null["pooled"]).max() > 0.1
    first = next(read_shard(list_shards(str(root / "latents" / m["vae_id"] / "train"))[0]))
    again_z = load_npy(rows[f"{CLIP[1]}-000"]["npy"]).astype(np.float32)
    assert np.abs(again_z - load_npy(first["npy"]).astype(np.float32)).max() < 2e-3   # same latents
    text_run = str(work / "text_dit")
    launch(load(str(CONFIGS / "text_video.yaml"), [
        f"data.root={troot}", f"data.vae_id={m['vae_id']}", f"train.run_dir={text_run}", "train.steps=2",
        "scale.num_workers=0", "dit.hidden_size=32", "dit.depth=1", "dit.text_tokens=8",
        "train.sample_every=2", "train.eval_every=2", f"eval.local={local}", "eval.split=train",
        "eval.prompts=2", "eval.sample.steps=2",
        "optim.micro_batch_size=2", f"tracking.tracking_uri=sqlite:///{work}/mlruns.db"]))
    # held-out captions (here: the train split's one caption) were the prompts while it trained
    grid = np.load(Path(text_run) / "samples" / "step-00000002" / "samples.npy")
    assert grid.shape == (4, 4, 32, 32, 3)
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns.db")
    agree = mlflow.MlflowClient().get_metric_history(mlflow_run_id(text_run), "eval/class_accuracy")
    assert [h.step for h in agree] == [2] and agree[0].value in (0.0, 0.5, 1.0)   # of 2 videos
    told = generate(text_run, SampleJob(steps=2, s=1, prompts=["an archer draws the bow", "a dunk"],
                                        mlflow=False))
    assert told["prompts"] == ["an archer draws the bow", "a dunk"] and "labels" not in told
    assert decode_mp4(Path(told["mp4"]).read_bytes()).shape == (4, 32, 2 * 32, 3)
    with pytest.raises(ValueError, match="prompts="):
        generate(text_run, SampleJob(steps=2, mlflow=False))
    rep = evaluate(text_run, [*std[1], "prompts=2", "sample.steps=2", "sample.s=1", "batch_size=1"])
    assert rep["prompts"] == ["an archer draws the bow"] * 2 and rep["generated"] == 2
    assert rep["frames"] == 9 and rep["metrics"]["fvd9"] > 0 and rep["metrics"]["fvd9_fake"] == 2
    assert rep["classes"] == [2] and rep["metrics"]["chance"] == 1.0     # the caption's class
    assert rep["metrics"]["class_accuracy"] in (0.0, 0.5, 1.0) and rep["metrics"]["fvd_local"] > 0


def test_sample_grid_generate_and_continuation(dit_run, work):
    info = generate(dit_run, SampleJob(num_samples=3, steps=4, s=1, cfg_scale=2.0, labels=[2, 2, 0]))
    video = decode_mp4(Path(info["mp4"]).read_bytes())
    assert video.shape == (4, 32, 3 * 32, 3)        # 4 frames, a 1×3 grid of 32² cells
    assert Path(info["gif"]).stat().st_size > 0 and info["labels"] == [2, 2, 0]
    client = mlflow.MlflowClient()
    arts = [a.path for a in client.list_artifacts(info["mlflow_run_id"], "samples")]
    # training's, generate's
    assert sorted(arts) == ["samples/step-00000002", "samples/step-00000002-s1-cfg2.0"]
    names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(info["mlflow_run_id"], arts[1])}
    assert names == {"samples.mp4", "samples.gif", "samples.json"}
    # the samples the training run logged itself (train.sample_every, from the EMA weights)
    during = client.list_artifacts(info["mlflow_run_id"], "samples/step-00000002")
    assert {a.path.rsplit("/", 1)[-1] for a in during} == {"samples.mp4", "samples.gif"}
    # Continue 2 real frames to 7 (longer than the 4 trained on: sliding window of 4).
    long = generate(dit_run, SampleJob(num_samples=2, steps=4, s=2, cfg_scale=1.0, frames=7, context=2,
                                       context_split="train", out=str(work / "long"), mlflow=False))
    assert (long["frames"], long["context"], long["window"], long["labels"]) == (7, 2, 4, [2, 2])
    assert decode_mp4(Path(long["mp4"]).read_bytes()).shape == (7, 32, 2 * 32, 3)


def test_evaluate_dit_long_videos_and_vae_reconstructions(dit_run, vae_run, local):
    """The DiT run (long videos: two segments of the training length) and the AR-VAE run
    (reconstructions), with the local network only."""
    rep = evaluate(dit_run, [f"local={local}", "split=train", "per_class=3", "sample.steps=4", "sample.s=1",
                             "sample.frames=8", "standard=false", "checkpoint=2"])
    m = rep["metrics"]
    assert rep["classes"] == [2] and rep["generated"] == 3 and rep["frames"] == 8
    assert rep["checkpoint"] == "step-00000002"
    assert m["fvd_local"] > 0 and m["fid_local"] > 0 and len(m["fvd_local_segments"]) == 2
    assert m["gen_s_per_video"] > 0
    assert json.loads((Path(rep["out"]) / "report.json").read_text())["metrics"] == m
    client = mlflow.MlflowClient()
    hist = client.get_metric_history(mlflow_run_id(dit_run), "eval/fvd_local")
    assert [h.step for h in hist] == [1, 2] and all(h.value > 0 for h in hist)       # training's own
    child = client.get_run(rep["mlflow_run_id"])     # evaluate's: a child run, at the checkpoint's step
    assert child.data.tags["mlflow.parentRunId"] == mlflow_run_id(dit_run)
    assert [(h.step, h.value) for h in client.get_metric_history(child.info.run_id, "eval/fvd_local")] == \
        [(2, m["fvd_local"])]
    assert child.data.params["eval.sample.steps"] == "4"
    vrep = evaluate(vae_run[0], [f"local={local}", "split=train", "mlflow=false", "standard=false"])
    vm = vrep["metrics"]
    assert vm["rfvd_local"] > 0 and 5 < vm["psnr"] < 40      # a 2-step AR-VAE is far from lossless
    for x in (vm, m):
        assert x["motion"] > 0 and x["motion_real"] > 0
        assert x["motion_ratio"] == pytest.approx(x["motion"] / x["motion_real"])
    with pytest.raises(FileNotFoundError, match="ardscale.metrics.local"):
        evaluate(vae_run[0], ["local=/nope.pt", "split=train", "mlflow=false", "standard=false"])
    with pytest.raises(ValueError, match="s is now sample.s, steps is now sample.steps"):
        evaluate(dit_run, ["s=1", "steps=2"])
    with pytest.raises(ValueError, match=r"eval.sample.frames=2 is shorter than the held-out clips \(4 "):
        evaluate(dit_run, [f"local={local}", "split=train", "sample.frames=2", "standard=false",
                           "mlflow=false"])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 'step-00000001'.*'step-00000002'"):
        evaluate(dit_run, [f"local={local}", "checkpoint=step-00000001"])


def test_standard_metrics_with_the_original_networks(dit_run, vae_run, local, std, work):
    """FVD/KVD and FID/KID against real clips of 9 frames (the fewest the I3D takes) from another
    root; the 4-frame DiT is sampled 9 frames long with its sliding window, the AR-VAE reconstructs
    those 9-frame clips."""
    root9, overrides = std
    with pytest.raises(ValueError, match="clips of 4 frames; FVD16 needs 16: .* real_root="):
        evaluate(dit_run, [f"local={local}", "split=train", "references=train", "mlflow=false"])
    with pytest.raises(ValueError, match="keep 8 frames in flight, more than the training length 4"):
        evaluate(dit_run, [*overrides, "sample.steps=8", "sample.s=1"])   # before any sampling
    srep = evaluate(dit_run, [*overrides, "per_class=3", "sample.steps=2", "sample.s=1"])
    sm = srep["metrics"]
    assert srep["frames"] == 9 and len(sm["fvd_local_segments"]) == 2
    assert sm["fvd9"] > 0 and sm["fid"] > 0 and sm["kvd9_std"] >= 0 and np.isfinite(sm["kid"])
    assert (sm["fvd9_real"], sm["fvd9_fake"], sm["fid_real"], sm["fid_fake"]) == (3, 3, 3, 3)
    assert srep["references"] == {"train": f"train clips of {root9} (3 clips, 1 classes)"}
    cache = root9 / "videos" / "train" / "_features"
    files = {f.name.rsplit("-", 1)[0]: f.stat().st_mtime_ns for f in cache.glob("*.npy")}
    assert set(files) == {"i3d-f9-32px-n3", "inception1-f9-32px-n3"}
    vs = evaluate(vae_run[0], overrides)["metrics"]   # the same real clips: features from the cache
    assert vs["rfvd9"] > 0 and vs["rfid"] > 0 and vs["rfvd9_real"] == 3 and "rfvd_local" in vs
    assert {f.name.rsplit("-", 1)[0]: f.stat().st_mtime_ns for f in cache.glob("*.npy")} == files
    # real against real: a set against itself is 0
    floor = fvd_floor([str(root9), "split=train", "against=train", "max_clips=3", "fid_frames=1",
                       f"out={work / 'floor.json'}"])["metrics"]
    assert floor["fvd9"] < 1e-6 and floor["fid"] < 1e-6 and (floor["fvd9_real"], floor["fvd9_fake"]) == (3, 3)
    assert json.loads((work / "floor.json").read_text())["metrics"] == floor


def test_ablation_tables_and_continuation_drift(vae_run, latents, local, clip, work, ray_local):
    """Table 3 as a Ray Tune sweep: two variants (1 seed, 2 steps), one trial each, side by side on
    the 2 CPUs, one MLflow parent run over the two training runs. The eps run is stopped after its
    first step (its STOP file), which fails its trial; the same command again resumes it from its
    checkpoint and leaves the finished fopp trial alone, and once more trains nothing. Then a
    Table 2 sweep over s, and the drift study on 8-frame clips of the same video (twice the
    training length), 2 real frames given."""
    out, uri = work / "ablate", f"sqlite:///{work}/ablate.db"
    common = ["--local", local, "--per-class", "2", "--split", "train", "--tracking-uri", uri,
              "--out", str(out)]
    table3 = ["table3", "--root", str(vae_run[1]), "--vae-id", latents[1]["vae_id"], "--variants", "fopp",
              "eps", "--seeds", "1", "--steps", "2", "--set", "optim.micro_batch_size=2",
              "optim.warmup_steps=0", *common]   # 2 steps at full LR: the context must matter (drift)

    def steps(run: str) -> list[int]:
        return [json.loads(line)["step"] for line in (out / run / "metrics.jsonl").read_text().splitlines()]

    (out / "eps-s0").mkdir(parents=True)
    (out / "eps-s0" / "STOP").touch()
    with pytest.raises(RuntimeError, match="eps-s0.*asked to stop"):
        ablate(table3)
    assert steps("fopp-s0") == [0, 1] and steps("eps-s0") == [0] and not (out / "eps-s0" / "STOP").exists()
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("ardscale-ablate").experiment_id
    runs = client.search_runs([exp], "tags.ablation = 'table3'")
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("eps-s0", "KILLED"),
                                                                     ("fopp-s0", "FINISHED")]
    # side by side: the eps run trained and stopped while the fopp trial ran (Tune's result.json)
    fopp = json.loads(next(out.glob("tune/table3-*/fopp-s0/result.json")).read_text().splitlines()[-1])
    eps = [json.loads(line)["time"] for line in (out / "eps-s0" / "events.jsonl").read_text().splitlines()]
    assert fopp["timestamp"] - fopp["time_total_s"] < eps[-1] and eps[0] < fopp["timestamp"]
    fopp_rows = (out / "fopp-s0" / "metrics.jsonl").read_text()

    t3 = ablate(table3)   # resumes the sweep: eps from its step-1 checkpoint, fopp is not trained again
    assert (out / "fopp-s0" / "metrics.jsonl").read_text() == fopp_rows and steps("eps-s0") == [0, 1]
    events = [json.loads(line) for line in (out / "eps-s0" / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("stop", 1), ("start", 1)]
    assert events[-1]["resumed_from"] == "step-00000001"
    assert set(t3["results"]) == {"fopp", "eps"}
    assert all(r[0]["fvd_local"] > 0 for r in t3["results"].values())
    assert [r[0]["run"] for r in t3["results"].values()] == [str(out / "fopp-s0"), str(out / "eps-s0")]
    assert (out / "table3.md").read_text().count("\n") == 4
    assert json.loads((out / "table3.json").read_text())["results"] == t3["results"]
    # MLflow: one parent run (the sweep), the two training runs its children
    parent = t3["mlflow_parent_run_id"]
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted((r.info.run_name, r.info.status) for r in children) == [("eps-s0", "FINISHED"),
                                                                         ("fopp-s0", "FINISHED")]
    top = [r for r in client.search_runs([exp]) if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_id, r.info.status) for r in top] == [(parent, "FINISHED")]
    assert Path(t3["tune_dir"]).parent == out / "tune"

    rows = {run: (out / run / "metrics.jsonl").read_text() for run in ("fopp-s0", "eps-s0")}
    again = ablate(table3)   # a finished sweep: restored, nothing trained or evaluated again
    assert again["results"] == t3["results"] and again["mlflow_parent_run_id"] == parent
    assert {run: (out / run / "metrics.jsonl").read_text() for run in rows} == rows
    assert len((out / "eps-s0" / "events.jsonl").read_text().splitlines()) == 3
    assert len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")) == 2

    t2 = ablate(["table2", "--dit-run", str(work / "ablate" / "fopp-s0"), "--s-values", "0", "4", *common])
    assert [r["s"] for r in t2["results"]] == [0, 4] and all(r["gen_s_per_video"] > 0 for r in t2["results"])
    long_root = work / "long8"
    shard_one([VideoItem(str(clip), 2, *CLIP)], str(long_root / "videos" / "train" / "shard-000000.tar"),
              num_frames=8, fps=8, size=32, max_clips=2, split="train")
    dr = ablate(["drift", "--dit-run", str(work / "ablate" / "fopp-s0"), "--clips", str(long_root),
                 "--context", "2", "--s-values", "4", "--ddim-steps", "4", "--sample-variant",
                 "ctx:context_noise=100", "sink:sink=1", *common])
    res = dr["results"]
    assert (dr["clips"], dr["frames"], dr["window"]) == (2, 8, 4)
    assert set(res) == {"recon", "frozen", "s=4", "s=4 ctx", "s=4 sink"}
    # Each variant measured at every frame. Their PSNRs are not compared: a DiT trained 2 steps barely reads
    # its context, so the variants differ by under one uint8 level and the 2-step training is not
    # bit-reproducible from run to run (equal in 2 of 3 runs on one machine). That context noise enters
    # the model is checked on the next-frame estimate below.
    assert all(len(res[k]["psnr"]) == 8 and all(math.isfinite(p) for p in res[k]["psnr"])
               for k in ("s=4", "s=4 ctx", "s=4 sink"))
    assert {"sampled", "sampled ctx", "x0@500 ctx/swapped"} <= set(dr["next_frame"])
    # the sink acts on a sliding window only: its next frame is the plain one, not computed again
    assert "sampled sink" not in dr["next_frame"] and dr["checkpoint"] == "step-00000002"
    assert dr["next_frame"]["x0@500 ctx"] != dr["next_frame"]["x0@500"]   # the context enters noised
    assert all((len(r["psnr"]), len(r["fvd_local"]), len(r["motion"])) == (8, 5, 7) for r in res.values())
    assert res["frozen"]["motion_vs_real"] == 0 and res["s=4"]["motion_vs_real"] > 0   # frozen stands still
    # The given frames are the VAE's reconstructions in every set; after them the frozen set repeats frame 1.
    for name in ("frozen", "s=4"):
        assert res[name]["psnr"][:2] == pytest.approx(res["recon"]["psnr"][:2], abs=0.05)
    assert (work / "ablate" / "drift.png").stat().st_size > 10_000
    assert (work / "ablate" / "drift.mp4").is_file()
    curve = mlflow.MlflowClient(f"sqlite:///{work}/ablate.db").get_metric_history(dr["mlflow_run_id"],
                                                                                  "drift/s4/psnr")
    assert [h.step for h in curve] == list(range(8)) and [h.value for h in curve] == res["s=4"]["psnr"]
