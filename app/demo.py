"""The built-in demo: the music-upload workflow of the original design, with simulated work.

processFile -> metadata + transcode in parallel -> store-metadata (one at a
time) -> notify-user. metadata fingerprints the file, asks musicBrainz
(throttled to 1/s), queries three catalogues in parallel, downloads the cover
and extracts its palette in a separate process (`thread`). Durations are
realistic and varied; some calls fail now and then and retries absorb them;
`corrupt-*` uploads fail for good; uploads under `scheduled/` sleep until
their release. `DQ_DEMO_SPEED` (default 1) divides every simulated duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from dq import create_job, create_queue, run, sleep, thread

# -- simulated world ----------------------------------------------------------------


def speed() -> float:
    try:
        return max(0.01, float(os.environ.get("DQ_DEMO_SPEED", "1")))
    except ValueError:
        return 1.0


def failure_scale() -> float:
    """`DQ_DEMO_FAILURES=0` turns the transient failures off (tests); corrupt files still fail."""
    try:
        return max(0.0, float(os.environ.get("DQ_DEMO_FAILURES", "1")))
    except ValueError:
        return 1.0


def _rng(*parts: Any) -> random.Random:
    seed = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


async def work(path: str, step: str, low: float, high: float, fail_rate: float = 0.0) -> None:
    """Wait like an I/O call of `low`-`high` seconds; fail like a flaky service, now and then."""
    rng = _rng(path, step, random.random() if fail_rate else 0)
    await asyncio.sleep(rng.uniform(low, high) / speed())
    if fail_rate and rng.random() < fail_rate * failure_scale():
        raise ConnectionError(f"{step}: upstream returned 503 Service Unavailable")


def field(obj: Any, name: str) -> Any:
    """A child job's output comes back as its model or as a dict: read either."""
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _ms(value: float) -> int:
    return max(1, int(value * 1000 / speed()))


class Upload(BaseModel):
    path: str


class Transcoded(BaseModel):
    path: str


class Fingerprint(BaseModel):
    fingerprint: str


class Recording(BaseModel):
    id: str


class SongMeta(BaseModel):
    title: str
    artist: str
    id: str
    palette: list[str]


def _throttled(**options: Any) -> dict[str, Any]:
    """`throttle` lands with a later engine issue: use it when the engine accepts it."""
    try:
        create_job(lambda: None, name="_probe_throttle", throttle="1 per second")
    except (TypeError, ValueError, NotImplementedError):
        return options
    # "queue": a call that comes too early waits its turn (the default, "discard", drops it).
    return {**options, "throttle": {"duration": "1 per second", "mode": "queue"}}


# -- jobs ---------------------------------------------------------------------------


@create_job(name="transcode", input=Upload, output=Transcoded, concurrency=2, timeout="5m",
            backoff=lambda attempt, _input: _ms(0.8 * attempt))  # fmt: skip
async def transcode(data: Upload) -> Transcoded:
    out = data.path.removesuffix(".mp3") + ".ogg"

    async def ffmpeg() -> str:
        if "corrupt" in data.path:
            await asyncio.sleep(0.4 / speed())
            raise RuntimeError(f"ffmpeg: {data.path}: Invalid data found when processing input")
        await work(data.path, "ffmpeg", 2.0, 7.0, fail_rate=0.07)
        return out

    await run("ffmpeg", ffmpeg, retry=2, backoff=_ms(1.0))
    return Transcoded(path=out)


@create_job(name="musicBrainz", input=Fingerprint, output=Recording, **_throttled())
async def music_brainz(data: Fingerprint) -> Recording:
    async def fetch() -> dict[str, Any]:
        await work(data.fingerprint, "musicbrainz-fetch", 0.3, 0.9, fail_rate=0.05)
        return {"recordings": [{"id": "mbid-" + data.fingerprint[:12], "score": 100}]}

    found = await run("musicbrainz-fetch", fetch, backoff=_ms(0.5))
    return Recording(id=found["recordings"][0]["id"])


def _catalogue(name: str, low: float, high: float, fail_rate: float) -> Callable[[Recording], Any]:
    async def lookup(data: Recording) -> dict[str, Any]:
        async def fetch() -> dict[str, Any]:
            await work(data.id, f"{name}-fetch", low, high, fail_rate)
            rng = _rng(data.id, name)
            return {"source": name, "popularity": rng.randint(1, 100), "tags": rng.sample(TAGS, 2)}

        found: dict[str, Any] = await run("fetch", fetch, backoff=_ms(0.6))
        return found

    lookup.__name__ = lookup.__qualname__ = name
    return lookup


TAGS = ["indie", "electronic", "jazz", "ambient", "rock", "folk", "soul", "techno", "lo-fi"]
spotify = create_job(_catalogue("spotify", 0.2, 0.8, 0.04), name="spotify", input=Recording)
last_fm = create_job(_catalogue("lastFm", 0.3, 1.6, 0.15), name="lastFm", input=Recording)
audio_db = create_job(_catalogue("audioDB", 0.2, 2.5, 0.05), name="audioDB", input=Recording)


def extract_palette(data: dict[str, Any], ctx: Any) -> list[str]:
    """CPU work in a separate process: k-means-ish over a fake cover's pixels."""
    rng = _rng(data["path"], "palette")
    log = getattr(ctx, "logger", None)
    if callable(log):
        log(f"sampling 4096 pixels of {data['path']}")
    pixels = [(rng.random(), rng.random(), rng.random()) for _ in range(4096)]
    centres = pixels[:5]
    for _ in range(int(6 / min(speed(), 6)) + 1):
        groups: list[list[tuple[float, float, float]]] = [[] for _ in centres]
        for p in pixels:
            best = min(range(len(centres)), key=lambda i: sum((a - b) ** 2 for a, b in zip(p, centres[i], strict=True)))
            groups[best].append(p)
        centres = [tuple(sum(c) / len(g) for c in zip(*g, strict=True)) if g else centres[i]
                   for i, g in enumerate(groups)]  # fmt: skip
    return ["#" + "".join(f"{int(v * 255):02x}" for v in c) for c in centres]


@create_job(name="metadata", input=Upload, output=SongMeta, concurrency=10)
async def metadata(data: Upload) -> SongMeta:
    fingerprint = await run("fpcalc", lambda: _fpcalc(data.path))
    recording = await music_brainz.run({"fingerprint": fingerprint})
    found = await asyncio.gather(
        spotify.run(recording),
        last_fm.run(recording),
        audio_db.run(recording),
    )
    cover = await run("download-cover-art", lambda: _download_cover(data.path))
    try:
        palette = await thread("color-extractor", extract_palette, {"path": cover})
    except NotImplementedError:  # an engine without thread(): same work, in-process
        palette = await run("color-extractor", lambda: extract_palette({"path": cover}, None))
    artist, _, title = data.path.rsplit("/", 1)[-1].removesuffix(".mp3").partition(" - ")
    popularity = sum(f["popularity"] for f in found) // len(found)
    return SongMeta(title=title or artist, artist=artist if title else "Unknown artist",
                    id=f"{field(recording, 'id')}-{popularity}", palette=palette)  # fmt: skip


async def _fpcalc(path: str) -> str:
    await work(path, "fpcalc", 0.4, 1.5)
    return hashlib.sha1(path.encode()).hexdigest()


async def _download_cover(path: str) -> str:
    await work(path, "download-cover-art", 0.4, 1.2, fail_rate=0.06)
    return "/var/covers/" + hashlib.md5(path.encode()).hexdigest()[:10] + ".jpg"


@create_job(name="processFile", input=Upload, retry=2, backoff=lambda attempt, _input: _ms(1.5 * attempt))
async def process_file(data: Upload) -> dict[str, Any]:
    meta, transcoded = await asyncio.gather(
        metadata.run({"path": data.path}),
        transcode.run({"path": data.path}),
    )
    if "/scheduled/" in data.path:
        await sleep(_ms(20 * 60))  # hold the release until its date

    async def store() -> int:
        await work(data.path, "store-metadata", 0.1, 0.4)
        return _rng(data.path).randint(10_000, 99_999)

    song_id = await run("store-metadata", store, concurrency=1)
    await run("notify-user", lambda: work(data.path, "notify-user", 0.1, 0.3, fail_rate=0.05))
    return {"song_id": song_id, "title": field(meta, "title"), "artist": field(meta, "artist"),
            "ogg": field(transcoded, "path")}  # fmt: skip


JOBS = [process_file, transcode, metadata, music_brainz, spotify, last_fm, audio_db]

# -- the trickle ---------------------------------------------------------------------

ARTISTS = ["Nils Frahm", "Floating Points", "Khruangbin", "Arooj Aftab", "Bonobo", "Jon Hopkins",
           "Kiasmos", "Hania Rani", "Tycho", "Bicep", "Little Simz", "Moderat", "Ólafur Arnalds"]  # fmt: skip
WORDS = ["Night", "Glass", "River", "Signal", "Ember", "Echo", "Northern", "Paper", "Orbit", "Tide",
         "Velvet", "Static", "Lantern", "Harbour", "Saturn", "Gold", "Drift", "Marble"]  # fmt: skip


def upload_path(rng: random.Random, n: int) -> str:
    artist = rng.choice(ARTISTS)
    title = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
    folder = "scheduled" if n % 17 == 5 else "incoming"
    name = f"corrupt-{n:04d}" if n % 23 == 11 else f"{artist} - {title}"
    return f"uploads/{folder}/{name}.mp3"


async def trickle(queue: Any, *, every_s: tuple[float, float] = (2.5, 6.0), burst: int = 4) -> None:
    """Start uploads at a steady, slightly irregular pace, a few at once to begin with."""
    rng = random.Random()
    n = rng.randint(0, 500)
    for _ in range(burst):
        n += 1
        await queue.jobs.processFile.start({"path": upload_path(rng, n)})
    while True:
        # a faster demo runs its steps faster, but uploads arrive at most twice as often
        await asyncio.sleep(rng.uniform(*every_s) / min(speed(), 2.0))
        n += 1
        with contextlib.suppress(Exception):
            await queue.jobs.processFile.start({"path": upload_path(rng, n)})


#: The demo runs for days on a laptop: its dq.db keeps a bounded history.
DEMO_RETENTION = {"completed": "1h", "failed": "1 day", "cancelled": "1h"}


def create_demo_queue(storage: Any) -> Any:
    return create_queue(
        jobs={j.name: j for j in JOBS}, storage=storage, shutdown_grace="1s", retention=DEMO_RETENTION
    )


#: The demo's jobs for `dq-ui worker dq.app.demo:queue` (a worker uses the node's storage).
queue = create_demo_queue(None)
