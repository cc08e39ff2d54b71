"""Captions for the UCF-101 clips, for the text-conditioned pipeline on real video.

UCF-101 has no captions. These are written from the class of each video, with several templates per
class describing what the class's clips show (the action, the usual setting), picked by a hash of
the video's name so that neighbouring videos read differently. They say nothing a clip of that class
might not show (no clothing, gender, colour or count that was not checked clip by clip). Rows carry
the official split (split 1) so held-out captions stay held out, and the class (``label``, the
``classInd`` index minus one, and ``class_name``) so that evaluation can check that a video generated
from a caption shows its class (``class_accuracy`` in :mod:`ardscale.evaluate`); the model never
sees them.

    python data_prep/ucf101_captions.py --src ../shared/data/ucf101-subset \
        --out data_prep/captions/ucf101-subset.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ardscale.data.sources import ucf101_items

TEMPLATES = {
    "ApplyEyeMakeup": ["a person applying eye makeup", "close-up of someone putting on eye makeup",
                       "someone brushes makeup onto their eyelids", "eye makeup being applied in a mirror"],
    "Archery": ["an archer draws a bow and shoots an arrow", "a person aiming a bow at a target",
                "archery practice, drawing the bowstring and releasing it"],
    "BaseballPitch": ["a baseball pitcher throws a pitch", "a pitcher winds up on the mound and throws",
                      "a baseball game, the pitcher delivers the ball"],
    "Basketball": ["a basketball player shoots the ball at the hoop",
                   "someone takes a shot on a basketball court",
                   "a person throwing a basketball toward the basket"],
    "BasketballDunk": ["a player dunks a basketball",
                       "a basketball player jumps and slams the ball through the hoop",
                       "a dunk on a basketball court"],
    "BenchPress": ["a person lifting a barbell on a bench press",
                   "someone lying on a bench pressing a barbell",
                   "weight training, a bench press repetition"],
    "Biking": ["a person riding a bicycle", "a cyclist pedals along a path", "someone biking outdoors"],
    "Diving": ["a diver jumps from a board into a pool", "a competitive dive into the water",
               "a person diving off a platform into a swimming pool"],
    "HeadMassage": ["a person receiving a head massage", "hands massaging someone's scalp",
                    "a head massage, fingers rubbing the head"],
    "HorseRace": ["horses racing on a track", "jockeys ride racehorses around a race track",
                  "a horse race seen from beside the track"],
    "LongJump": ["an athlete sprints and performs a long jump",
                 "a long jumper runs down the track and leaps",
                 "track and field, a long jump into the sand pit"],
    "PlayingPiano": ["a person playing the piano", "hands moving across piano keys", "someone plays a piano"],
    "PlayingViolin": ["a person playing the violin", "a violinist drawing the bow across the strings",
                      "someone plays a violin"],
    "Surfing": ["a surfer rides a wave", "a person surfing on an ocean wave",
                "surfing along a breaking wave"],
    "Swing": ["a person swinging back and forth on a swing", "someone on a playground swing",
              "a swing moving back and forth"],
    "TaiChi": ["a person practicing tai chi", "slow tai chi movements", "someone doing tai chi exercises"],
    "WalkingWithDog": ["a person walking a dog on a leash", "someone walks with their dog",
                       "a dog and its owner out for a walk"],
}


def caption(class_name: str, key: str) -> str:
    """One of the class's templates, chosen by a hash of the video's key.

    Raises:
        KeyError: a class without templates (add them to :data:`TEMPLATES`).
    """
    options = TEMPLATES[class_name]
    return options[int(hashlib.blake2b(key.encode(), digest_size=4).hexdigest(), 16) % len(options)]


def rows(src: str) -> list[dict]:
    """A row per video of both official splits: path relative to ``src``, caption, split, class."""
    out = []
    for split in ("train", "test"):
        for it in ucf101_items(src, split):
            rel = Path(it.path).resolve().relative_to(Path(src).resolve())
            out.append({"path": str(rel), "caption": caption(it.class_name, it.key), "split": split,
                        "label": it.label, "class_name": it.class_name})
    return sorted(out, key=lambda r: r["path"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="../shared/data/ucf101-subset")
    p.add_argument("--out", default="data_prep/captions/ucf101-subset.jsonl")
    a = p.parse_args(argv)
    lines = rows(a.src)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in lines))
    print(f"{len(lines)} captions ({sum(r['split'] == 'test' for r in lines)} held out) → {a.out}")


if __name__ == "__main__":
    main()
