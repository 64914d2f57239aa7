#!/usr/bin/env python3
"""`sdgen serve` under load, on the tiny model (issue 31), with the standard library only.

  test_serve_load.py load BUILD_DIR SHARED_DIR   8 clients x 5 requests at once, then the full queue
  test_serve_load.py soak BUILD_DIR SHARED_DIR   500 requests; resident memory stays flat

load: 40 requests (A1111 txt2img and OpenAI images/generations mixed, each its
own prompt, seed, size and image count) are first sent one at a time, which
gives each request's images made alone; then 8 clients send the same 40 at
once. Every request must be answered 200 with exactly the images it got alone
(so none is lost, duplicated or swapped: the prompts and seeds differ, and each
PNG's parameters text names its own). Then a server with --queue-size 1 gets
12 requests at once: the ones it cannot queue are answered 503 with
Retry-After, the others with their images, and it serves normally afterwards.

soak: 500 generation requests (and some bad bodies and png-info calls among
them) from 2 clients on the smallest size and one step; the server's VmRSS
after the first 50 and after all 500 must differ by less than 5%.

Exit 77 (ctest: skipped) when sdgen was built without `serve` or the tiny model
(SHARED_DIR/models/sd1-tiny) is missing.
"""
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `sdgen serve` process on the tiny model, on a free port, one thread
    (on a busy machine OpenMP threads spin-wait for each other: the soak took
    twice as long with two)."""

    def __init__(self, build, model, workdir, name, extra=()):
        self.port = free_port()
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "wb")
        args = [os.path.join(build, "sdgen"), "serve", "--model", model, "--threads", "1",
                "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                fail(f"sdgen serve exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self.request("GET", "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        fail("sdgen serve did not become ready in 120 s:\n" + self.log_text())

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def request(self, method, path, body=None, timeout=300):
        """(status, headers, body bytes); a new connection each time."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body)
            headers = {} if body is None else {"Content-Type": "application/json"}
            conn.request(method, path, data, headers)
            res = conn.getresponse()
            return res.status, res.headers, res.read()
        finally:
            conn.close()

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        fail("no VmRSS in /proc/PID/status")

    def stop(self):
        """SIGTERM; the server must exit 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("sdgen serve did not stop within 60 s of SIGTERM")
        self.log.close()
        if self.proc.returncode != 0:
            fail(f"sdgen serve exited with {self.proc.returncode}:\n{self.log_text()}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- requests -----------------------------------------------------------------

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cube"]


class Job:
    """One request: its route, body and how its images come back."""

    def __init__(self, index, openai, body):
        self.index, self.openai, self.body = index, openai, body

    @property
    def path(self):
        return "/v1/images/generations" if self.openai else "/sdapi/v1/txt2img"

    def images(self, payload):
        """The PNG bytes of a 200 answer."""
        doc = json.loads(payload)
        items = [d["b64_json"] for d in doc["data"]] if self.openai else doc["images"]
        return [base64.b64decode(item, validate=True) for item in items]

    def expected_count(self):
        return self.body.get("n", 1) if self.openai else self.body.get("n_iter", 1)


def load_jobs(count):
    """Distinct prompts, seeds, sizes and image counts, A1111 and OpenAI alternating."""
    jobs = []
    for i in range(count):
        prompt = f"a {COLOURS[i % 8]} {SHAPES[i % 5]} number {i}"
        width, height = 64, 32 + 16 * (i % 3)
        if i % 2:
            body = {"prompt": prompt, "n": 1 + (i // 2) % 2, "size": f"{width}x{height}",
                    "response_format": "b64_json"}
        else:
            body = {"prompt": prompt, "seed": 1000 + i, "steps": 1 + (i // 2) % 2,
                    "width": width, "height": height, "sampler_name": "Euler a",
                    "n_iter": 1 + (i // 4) % 2}
        jobs.append(Job(i, bool(i % 2), body))
    return jobs


def png_parameters(png):
    """The "parameters" tEXt/iTXt chunk of a PNG (sdgen writes one of the two)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        fail("not a PNG")
    pos = 8
    while pos + 8 <= len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt" and data.startswith(b"parameters\0"):
            return data[len(b"parameters\0"):].decode("latin-1")
        if kind == b"iTXt" and data.startswith(b"parameters\0"):
            # keyword NUL, compression flag and method, language NUL, translated keyword NUL
            rest = data[len(b"parameters\0") + 2:]
            rest = rest[rest.index(b"\0") + 1:]
            return rest[rest.index(b"\0") + 1:].decode("utf-8")
    fail("the PNG has no parameters text")


def check_labelled(job, pngs):
    """Each image's parameters text names this job's prompt (and seed), as the
    command line writes it: a swap between requests shows here too."""
    for k, png in enumerate(pngs):
        text = png_parameters(png)
        if not text.startswith(job.body["prompt"] + "\n"):
            fail(f"request {job.index}: image {k} is labelled {text.splitlines()[0]!r}, "
                 f"not {job.body['prompt']!r}")
        if not job.openai and f"Seed: {job.body['seed'] + k}," not in text:
            fail(f"request {job.index}: image {k} has not seed {job.body['seed'] + k}: {text!r}")


def run_alone(server, jobs):
    """Each job's images, requests sent one at a time."""
    expected = {}
    for job in jobs:
        status, _, payload = server.request("POST", job.path, job.body)
        if status != 200:
            fail(f"request {job.index} alone: HTTP {status} {payload[:300]!r}")
        pngs = job.images(payload)
        if len(pngs) != job.expected_count():
            fail(f"request {job.index}: {len(pngs)} images, not {job.expected_count()}")
        check_labelled(job, pngs)
        expected[job.index] = pngs
    return expected


def run_at_once(server, batches):
    """Each list of jobs sent by its own client thread, all starting together.
    Returns {index: (status, headers, body, start, end)}."""
    results = {}
    lock = threading.Lock()
    barrier = threading.Barrier(len(batches))

    def client(batch):
        barrier.wait()
        for job in batch:
            start = time.monotonic()
            try:
                status, headers, payload = server.request("POST", job.path, job.body)
            except OSError as e:
                status, headers, payload = -1, {}, str(e).encode()
            with lock:
                results[job.index] = (status, headers, payload, start, time.monotonic())

    threads = [threading.Thread(target=client, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def most_in_flight(results):
    """The largest number of requests open at one moment (client side)."""
    events = sorted([(r[3], 1) for r in results.values()] + [(r[4], -1) for r in results.values()])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


# ---- the tests ------------------------------------------------------------------


def test_load(build, model, workdir):
    clients, per_client = 8, 5
    jobs = load_jobs(clients * per_client)
    # The OpenAI route takes its seed and steps from the server's command line.
    server = Server(build, model, workdir, "load", ["--seed", "77", "--steps", "2"])
    try:
        t0 = time.monotonic()
        expected = run_alone(server, jobs)
        t1 = time.monotonic()
        batches = [jobs[c * per_client:(c + 1) * per_client] for c in range(clients)]
        results = run_at_once(server, batches)
        t2 = time.monotonic()
        if sorted(results) != [job.index for job in jobs]:
            fail(f"answers for {len(results)} of {len(jobs)} requests")
        for job in jobs:
            status, _, payload, _, _ = results[job.index]
            if status != 200:
                fail(f"request {job.index} at once: HTTP {status} {payload[:300]!r}\n"
                     + server.log_text())
            pngs = job.images(payload)
            if pngs != expected[job.index]:
                fail(f"request {job.index}: its images at once differ from its images alone "
                     f"({len(pngs)} vs {len(expected[job.index])} images)")
        in_flight = most_in_flight(results)
        if in_flight < 2:
            fail(f"the clients never overlapped (at most {in_flight} request open)")
        images = sum(len(v) for v in expected.values())
        print(f"[load] {len(jobs)} requests ({images} images) alone in {t1 - t0:.1f} s, "
              f"from {clients} clients at once in {t2 - t1:.1f} s (up to {in_flight} open): "
              "all 200, every image equal to its image alone")
        server.stop()
    finally:
        server.kill()

    # The full queue: one request generating, one waiting, the rest refused.
    server = Server(build, model, workdir, "queue", ["--queue-size", "1"])
    try:
        slow = [Job(i, False, {"prompt": f"a {COLOURS[i % 8]} star number {i}", "seed": 50 + i,
                               "steps": 6, "width": 64, "height": 64})
                for i in range(12)]
        results = run_at_once(server, [[job] for job in slow])
        statuses = [results[job.index][0] for job in slow]
        if statuses.count(503) == 0 or statuses.count(200) == 0:
            fail(f"--queue-size 1, 12 requests at once: statuses {statuses}, expected "
                 "some 200 and some 503")
        if any(s not in (200, 503) for s in statuses):
            fail(f"--queue-size 1: statuses {statuses}")
        served = [job for job in slow if results[job.index][0] == 200]
        for job in slow:
            status, headers, payload, _, _ = results[job.index]
            if status != 503:
                continue
            retry = headers.get("Retry-After")
            if retry is None or not retry.isdigit():
                fail(f"a 503 without a Retry-After (seconds): headers {dict(headers)}")
            doc = json.loads(payload)
            if "queue" not in json.dumps(doc):
                fail(f"the 503 body does not say the queue is full: {doc}")
        # Served ones are correct, and the server works normally afterwards.
        alone = run_alone(server, served + [Job(99, False, dict(slow[0].body, seed=4))])
        for job in served:
            if job.images(results[job.index][2]) != alone[job.index]:
                fail(f"queue test: request {job.index}'s image differs from its image alone")
        status, _, _ = server.request("GET", "/health")
        if status != 200:
            fail(f"/health after the full queue: HTTP {status}")
        print(f"[load] --queue-size 1, 12 requests at once: {statuses.count(200)} answered 200, "
              f"{statuses.count(503)} 503 with Retry-After; served normally afterwards")
        server.stop()
    finally:
        server.kill()


def test_soak(build, model, workdir):
    total, baseline_after, clients = 500, 50, 2
    server = Server(build, model, workdir, "soak", ["--steps", "1", "--seed", "3"])
    try:
        counter = iter(range(total))
        lock = threading.Lock()
        done = [0]
        rss = {}
        errors = []
        png_b64 = [None]

        def next_index():
            with lock:
                return next(counter, None)

        def one(i):
            """Request i: mostly images at the smallest size and one step, with a
            bad body every 20th and a png-info call every 25th."""
            if i % 20 == 19:
                path, body, want = "/sdapi/v1/txt2img", {"prompt": "x", "steps": "many"}, 422
            elif i % 25 == 24 and png_b64[0]:
                path, body, want = "/sdapi/v1/png-info", {"image": png_b64[0]}, 200
            elif i % 2:
                path, want = "/v1/images/generations", 200
                body = {"prompt": f"a {COLOURS[i % 8]} {SHAPES[i % 5]} {i}", "size": "8x8",
                        "response_format": "b64_json"}
            else:
                path, want = "/sdapi/v1/txt2img", 200
                body = {"prompt": f"a {SHAPES[i % 5]} and a {COLOURS[i % 8]} square {i}" * (i % 3 + 1),
                        "seed": i, "steps": 1, "width": 8, "height": 8}
            status, _, payload = server.request("POST", path, body)
            if status != want:
                errors.append(f"request {i} {path}: HTTP {status}, expected {want}: {payload[:200]!r}")
            elif path == "/sdapi/v1/txt2img" and want == 200 and png_b64[0] is None:
                png_b64[0] = json.loads(payload)["images"][0]

        def client():
            while True:
                i = next_index()
                if i is None:
                    return
                one(i)
                with lock:
                    done[0] += 1
                    if done[0] in (baseline_after, total):
                        rss[done[0]] = server.rss_kib()

        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        if errors:
            fail(f"{len(errors)} wrong answers, the first: {errors[0]}")
        growth = rss[total] / rss[baseline_after] - 1
        print(f"[soak] {total} requests in {seconds:.1f} s ({seconds / total * 1000:.0f} ms each, "
              f"{clients} clients); VmRSS after {baseline_after}: {rss[baseline_after] / 1024:.1f} MiB, "
              f"after {total}: {rss[total] / 1024:.1f} MiB ({growth * 100:+.2f}%)")
        if growth >= 0.05:
            fail(f"resident memory grew by {growth * 100:.1f}% (limit 5%)")
        server.stop()
    finally:
        server.kill()


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("load", "soak"):
        print(__doc__, file=sys.stderr)
        return 2
    test, build, shared = sys.argv[1:]
    shared = os.environ.get("SDGEN_SHARED_DIR") or shared  # as the C++ tests: the environment wins
    sdgen = os.path.join(build, "sdgen")
    model = os.path.join(shared, "models", "sd1-tiny")
    if not os.path.isdir(model):
        print(f"SKIP: the tiny model {model} is missing", file=sys.stderr)
        return SKIP
    help_text = subprocess.run([sdgen, "serve", "--help"], capture_output=True, text=True)
    if help_text.returncode != 0 or "--queue-size" not in help_text.stdout:
        print("SKIP: sdgen was built without `serve`", file=sys.stderr)
        return SKIP
    with tempfile.TemporaryDirectory(prefix="sdgen-serve-" + test + "-") as workdir:
        (test_load if test == "load" else test_soak)(build, model, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
