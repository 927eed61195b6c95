#!/usr/bin/env python3
"""Mixed traffic at a sustained rate for benches/soak.sh (stdlib only).

Usage: soak.py PORT SECONDS RATE SCRAPE_EVERY TOKEN
  RATE requests/s in total, spread over 4 keep-alive connections:
  new alerts 10 %, duplicates 35 %, resolves 10 %, wrong credentials (401)
  10 %, health probes 25 %, interaction clicks (unsigned: refused) 10 %.
  SCRAPE_EVERY > 0 also GETs /metrics that often (seconds); 0: no scraper.
Prints one line of counts per (kind, status) at the end.
"""

import collections
import http.client
import json
import random
import sys
import threading
import time

port, seconds, rate, scrape_every, token = (
    int(sys.argv[1]),
    float(sys.argv[2]),
    float(sys.argv[3]),
    float(sys.argv[4]),
    sys.argv[5],
)
THREADS = 4
MIX = [
    ("new", 10),
    ("duplicate", 35),
    ("resolve", 10),
    ("unauthorized", 10),
    ("health", 25),
    ("click", 10),
]
KINDS = [k for k, w in MIX for _ in range(w)]

lock = threading.Lock()
counts = collections.Counter()
# Fired alerts not yet resolved: (fingerprint, startsAt, body); bounded.
firing = collections.deque(maxlen=5000)
sequence = 0


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"


def payload(fp, starts, status, ends):
    return json.dumps(
        {
            "receiver": "remedy",
            "status": status,
            "alerts": [
                {
                    "status": status,
                    "labels": {
                        "alertname": "SoakTest",
                        "severity": "warning",
                        "instance": "db-%s" % fp[-3:],
                    },
                    "annotations": {"summary": "soak test alert"},
                    "startsAt": starts,
                    "endsAt": ends,
                    "generatorURL": "http://prometheus/graph",
                    "fingerprint": fp,
                }
            ],
            "groupLabels": {"alertname": "SoakTest"},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "version": "4",
            "groupKey": '{}:{alertname="SoakTest"}',
            "truncatedAlerts": 0,
        }
    ).encode()


def request(kind):
    """Returns (method, path, body, headers) for one request of `kind`."""
    global sequence
    auth = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    if kind == "duplicate" or kind == "resolve":
        with lock:
            pick = None
            if firing:
                if kind == "resolve":
                    pick = firing.popleft()
                else:
                    pick = firing[random.randrange(len(firing))]
        if pick is None:
            kind = "new"
        elif kind == "resolve":
            fp, starts, _ = pick
            return "POST", "/v1/alertmanager", payload(fp, starts, "resolved", iso(time.time())), auth
        else:
            return "POST", "/v1/alertmanager", pick[2], auth
    if kind == "new":
        with lock:
            sequence += 1
            fp = "%04x%012x" % (port, sequence)
        starts = iso(time.time())
        body = payload(fp, starts, "firing", "0001-01-01T00:00:00Z")
        with lock:
            firing.append((fp, starts, body))
        return "POST", "/v1/alertmanager", body, auth
    if kind == "unauthorized":
        body = payload("dead", iso(time.time()), "firing", "0001-01-01T00:00:00Z")
        return "POST", "/v1/alertmanager", body, {
            "Authorization": "Bearer wrong",
            "Content-Type": "application/json",
        }
    if kind == "health":
        return "GET", "/healthz", None, {}
    # A Slack click without a valid signature: verified, refused, nothing stored.
    body = b"payload=%7B%22type%22%3A%22block_actions%22%7D"
    return "POST", "/v1/interactions/slack", body, {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(int(time.time())),
        "X-Slack-Signature": "v0=" + "0" * 64,
    }


def worker(stop_at, per_thread):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    interval = 1.0 / per_thread
    next_at = time.monotonic()
    local = collections.Counter()
    while time.monotonic() < stop_at:
        kind = random.choice(KINDS)
        method, path, body, headers = request(kind)
        for attempt in (1, 2):
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                local[(kind, response.status)] += 1
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected) as error:
                # The server closed a keep-alive connection (it does after
                # answering 401 without reading the body): once more on a
                # new one.
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                if attempt == 2:
                    local[(kind, type(error).__name__)] += 1
            except Exception as error:  # noqa: BLE001 - counted, connection renewed
                local[(kind, type(error).__name__)] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                break
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1:
            next_at = time.monotonic()  # fell behind: do not burst to catch up
    with lock:
        counts.update(local)


def scraper(stop_at):
    while time.monotonic() < stop_at:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            response.read()
            with lock:
                counts[("scrape", response.status)] += 1
            conn.close()
        except Exception as error:  # noqa: BLE001
            with lock:
                counts[("scrape", type(error).__name__)] += 1
        time.sleep(scrape_every)


stop_at = time.monotonic() + seconds
threads = [threading.Thread(target=worker, args=(stop_at, rate / THREADS)) for _ in range(THREADS)]
if scrape_every > 0:
    threads.append(threading.Thread(target=scraper, args=(stop_at,)))
for t in threads:
    t.start()
for t in threads:
    t.join()
total = sum(v for (k, _), v in counts.items() if k != "scrape")
print(
    "requests: %d (%.0f/s); " % (total, total / seconds)
    + ", ".join("%s %s: %d" % (k, s, v) for (k, s), v in sorted(counts.items(), key=str))
)
