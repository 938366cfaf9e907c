"""The collector's MQTT side (`Collector`): connect, subscribe to reports, status and region
lists, the snapshot fence, the loop over paho's external-loop API, reconnect. What becomes of
each message is message_intake.py's job; the socket under paho is socket_reader.py's.

Programmatic use (benchmarks drive this in-process)::

    from clockfleet.collector.ingest import Collector
    from clockfleet.protocol.connection import ConnectionSettings, parse_brokers

    c = Collector(ConnectionSettings(parse_brokers("mqtt://127.0.0.1:PORT")),
                  on_report=lambda agent, report, t: ...)   # optional hook
    c.start()            # connects (raises BrokerUnreachable if no broker answers), then
                         # runs the MQTT loop in a daemon thread
    c.state              # FleetState: .agents[agent].report / .status, .regions[region]
    c.retained_loaded    # threading.Event: the broker has sent the whole retained snapshot
    c.link_state         # session.LinkState; c.connected: ONLINE (connected and subscribed)
    c.link()             # LinkStats: connected, reconnects
    c.stop()

    # /metrics as `clockfleet collector` serves it (cached per agent between scrapes):
    from clockfleet.collector.metrics import MetricsRenderer
    body = MetricsRenderer(c.state, c.link).render()

`on_report(agent, report, t)` and `on_message(result, t)` are message_intake.Hooks: called in
the MQTT thread, keep them cheap.

Where the connection stands (`link_state`, the names every program uses):

    IDLE ─> CONNECTING ─socket up─> AWAITING_CONNACK ─CONNACK ok, then SUBACK ok─> ONLINE
     ^      (TCP, TLS, CONNECT)     (the socket reader is under paho)                 |
     └── refused, lost, no CONNACK, SUBACK refused: the next node, after Rotation.delay ┘
    stop(): STOPPING ─> CLOSED

The collector is of use only once subscribed, so it stays AWAITING_CONNACK until the SUBACK:
`connected` (and clockfleet_collector_broker_connected) means ONLINE.

Why it is written this way:
- Retained state is read at **QoS 0**: Mosquitto hands a new QoS 1 wildcard subscriber at most
  ~1020 retained messages (max_inflight + max_queued) and drops the rest; at QoS 0 it sends all.
- A clean session: the retained messages are the state, there is nothing to resume.
- One paho client over its external-loop API in one thread, over a BufferedLink whose own
  thread drains the socket into memory as fast as the broker sends: Mosquitto drops QoS 0
  messages, too, for a subscriber that has more than max_queued_messages (default 1000)
  packets waiting, and decoding is slower than the retained burst arrives.
- `retained_loaded`: after each SUBACK the session's snapshot fence is armed
  (`session.Fences`: an UNSUBSCRIBE of a topic nobody uses); Mosquitto answers it only after
  queueing every retained message (it handles a client's packets in order). Other brokers
  may deliver later: `clockfleet status` also waits for a quiet spell.
- Broker loss: reconnect through the cluster's nodes with the shared rotation and backoff
  (`connection.Rotation`: full jitter, growing per round of the list; paho's own has none),
  and subscribe again on every connect. A refused CONNACK or SUBACK is named by its reason
  code (`session.refusal`).
- Why not `connection.connect_blocking`: it runs paho's own threaded loop, whose select()
  on the real socket would race the reader's I/O thread, and it hands the connection over
  only after the CONNACK, while the reader must be under paho before any packet is read
  (paho_socket.py). So the collector keeps its own connect step (`_connect_one`), built from
  the same parts: `connection.new_client`, `connection.Rotation`, `session.refusal`.
- No message can stop the loop (message_intake.py). An exception out of paho's own packet
  handling leaves paho's state unknown: it is counted in `state.handler_errors` too, and the
  connection is dropped and made again.
- A flood must not starve the loop: each turn reads for at most SLICE_S before paho gets to
  write and to send its keepalive PINGREQ (otherwise the broker drops us after 1.5 x the
  keepalive and we reload everything, again and again); the reader bounds its buffer
  (socket_reader.py) and a per-topic token bucket drops one topic's excess (ratelimit.py).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from clockfleet.collector import paho_socket
from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.message_intake import Hooks, Intake, MessageHook, ReportHook
from clockfleet.collector.metrics import LinkStats
from clockfleet.collector.ratelimit import DEFAULT_RATE_LIMIT, RateLimit
from clockfleet.collector.region_shard import RegionShard, region_list_topics
from clockfleet.collector.socket_reader import MAX_BUFFER, BufferedLink
from clockfleet.protocol import session
from clockfleet.protocol.connection import (
    BrokerAddress,
    BrokerUnreachable,
    ConnectionSettings,
    Rotation,
    new_client,
)
from clockfleet.protocol.session import Fences, LinkState
from clockfleet.protocol.topics import all_agents_filter, all_servers_filter

log = logging.getLogger("clockfleet.collector")

KEEPALIVE_S = 30
# After a reconnection the collector reads the retained state again, at each of these delays:
# on a cluster, a report published while the collector was subscribing again can miss both
# the retained snapshot it got and live delivery (interest reaches the other nodes only after
# the SUBACK). Measured with `python -m bench scaleout` on NATS: 94 of 1000 reports of a list
# change missing for good in one run of five. An identical SUBSCRIBE makes the broker send the
# retained messages again; an old copy cannot roll a report back (fleet_state: "older-list").
REREAD_AFTER_S = (5.0, 15.0, 30.0)
RECONNECT_BASE_S = 0.5
RECONNECT_CAP_S = 30.0
# Longest a turn of the loop reads before paho may write and check its keepalive.
SLICE_S = 0.05


def subscriptions(prefix: str, regions: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """Every report and status (their topics name no region), and the region lists: all of
    them, or by topic those of the regions a sharded collector serves."""
    lists = region_list_topics(prefix, regions) if regions else [all_servers_filter(prefix)]
    return [
        (all_agents_filter(prefix, "report"), 0),
        (all_agents_filter(prefix, "status"), 0),
        *((t, 0) for t in lists),
    ]


class Collector:
    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        on_report: ReportHook | None = None,
        on_message: MessageHook | None = None,
        client_id: str | None = None,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
        keepalive_s: int = KEEPALIVE_S,
        max_buffer: int = MAX_BUFFER,
        regions: Iterable[str] | None = None,
    ) -> None:
        self.settings = settings
        self.state = FleetState(settings.prefix)
        self.intake = Intake(self.state, Hooks(on_report, on_message), rate_limit)
        # --region: only these regions' agents and lists (region_shard.py); None: all.
        self.shard = RegionShard(regions, settings.prefix, self.state) if regions else None
        self.client_id = client_id or f"clockfleet-collector-{uuid.uuid4().hex[:12]}"
        self.keepalive_s = keepalive_s
        self.max_buffer = max_buffer
        # Moved by the MQTT thread (by start() before it runs, by stop() once it is asked).
        self.link_state = LinkState.IDLE
        self.rotation = Rotation(settings.brokers)
        self.current_broker: BrokerAddress | None = None
        self.fences = Fences(settings.prefix, self.client_id)
        # The fence's answer, for threads that wait for the snapshot (`clockfleet status`);
        # cleared whenever the connection ends.
        self.retained_loaded = threading.Event()
        self._connections = 0
        self._connack: ReasonCode | None = None  # the current attempt's
        self._stop = threading.Event()  # stop() asks; every wait of the MQTT thread ends
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._rereads: list[float] = []  # when to read the retained state again (monotonic)

    # --- public --------------------------------------------------------------------------

    def link(self) -> LinkStats:
        return LinkStats(self.connected, max(0, self._connections - 1))

    @property
    def connected(self) -> bool:
        """Connected and subscribed."""
        return self.link_state is LinkState.ONLINE

    def start(self, timeout_s: float | None = None) -> Collector:
        """Connect to the first broker that answers (or raise BrokerUnreachable), subscribe,
        and keep the MQTT loop running in a daemon thread from then on."""
        timeout = self.settings.connect_timeout_s if timeout_s is None else timeout_s
        errors = []
        for _ in self.rotation.order:
            addr, err = self._connect_one(timeout)
            if err is None:
                break
            errors.append(f"{addr}: {err}")
        else:
            raise BrokerUnreachable("; ".join(errors))
        self._thread = threading.Thread(target=self._run, name="collector-mqtt", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.link_state = LinkState.STOPPING
        if self._thread is not None:
            self._thread.join(5)
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_write()
            self._drop(client)
        self.link_state = LinkState.CLOSED

    # --- connection ------------------------------------------------------------------------

    def _enter(self, state: LinkState) -> None:
        if not self._stop.is_set():  # once stop() is asked, only it moves the state
            self.link_state = state

    def _connect_one(self, timeout: float) -> tuple[BrokerAddress, str | None]:
        """Open a connection to the next node and serve it until the CONNACK; None as the
        error when it is up."""
        addr = self.current_broker = self.rotation.next()
        self._enter(LinkState.CONNECTING)
        client = self._new_client()
        try:
            client.connect(addr.host, addr.port, keepalive=self.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            return self._failed(addr, str(exc))
        self.intake.new_connection()
        self._install_reader(client)
        self._enter(LinkState.AWAITING_CONNACK)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self._serve(client, 0.05)
            if self._connack is not None:
                refused = session.refusal(self._connack)
                if refused is not None:
                    self._drop(client)
                    return self._failed(addr, f"refused: {refused}")
                self._client = client
                self.rotation.succeeded()
                return addr, None
            if not alive:
                self._drop(client)
                return self._failed(addr, "connection lost before CONNACK")
        self._drop(client)
        return self._failed(addr, f"no CONNACK within {timeout:g} s")

    def _failed(self, addr: BrokerAddress, why: str) -> tuple[BrokerAddress, str]:
        self.rotation.failed()
        self._enter(LinkState.IDLE)
        return addr, why

    def _new_client(self) -> mqtt.Client:
        """A client for one attempt; its CONNACK is not in yet."""
        self._connack = None
        client = new_client(self.settings, self.client_id, clean_session=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_unsubscribe = self._on_unsubscribe
        on_message = self.intake.on_message
        client.on_message = self.shard.message(on_message) if self.shard else on_message
        return client

    def _install_reader(self, client: mqtt.Client) -> None:
        """Put the socket reader under paho, before paho reads anything (paho_socket.py)."""
        # The reader's own PUBLISH framing reads the MQTT 3.1.1 layout (no properties).
        fast: Callable[[bytes, bytes], None] | None = None
        if client.protocol == mqtt.MQTTv311:
            fast = self.intake.on_raw_publish
            if self.shard is not None:
                fast = self.shard.raw_publish(fast)
        paho_socket.install_link(
            client,
            lambda sock: BufferedLink(
                sock, on_publish=fast, on_refused=self.intake.on_refused, max_buffer=self.max_buffer
            ),
        )

    @staticmethod
    def _drop(client: mqtt.Client) -> None:
        with contextlib.suppress(Exception):
            sock = client.socket()
            if sock is not None:
                sock.close()

    def _lost(self) -> None:
        """The connection is gone: no snapshot is known complete and no fence will answer."""
        self._enter(LinkState.IDLE)
        self.retained_loaded.clear()
        self.fences.clear()

    # --- paho's callbacks (in the MQTT thread) ---------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack = reason_code
        refused = session.refusal(reason_code)
        if refused is not None:
            log.warning("broker refused the connection: %s", refused)
            return
        self._connections += 1
        log.info("connected to %s; subscribing", self.current_broker or "broker")
        client.subscribe(self._subscriptions())
        if self.shard is not None:
            self.shard.forget_requests()  # the snapshot brings every status
        if self._connections > 1:
            now = time.monotonic()
            self._rereads = [now + d for d in REREAD_AFTER_S]

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = session.refusal(reason_codes)
        if refused is not None:
            # NATS can refuse a SUBSCRIBE for a few seconds after a node dies: try again by
            # reconnecting (possibly to another node) rather than staying deaf.
            log.warning("broker refused a subscription (%s); reconnecting", refused)
            client.disconnect()
            return
        self._enter(LinkState.ONLINE)
        # Also after each re-read: its UNSUBACK comes after the retained snapshot sent again.
        self.fences.arm(client, self._snapshot_delivered)

    def _snapshot_delivered(self) -> None:
        log.info(
            "retained state delivered: %d agents, %d regions",
            len(self.state.agents),
            len(self.state.regions),
        )
        self.retained_loaded.set()

    def _on_unsubscribe(self, client: mqtt.Client, userdata: object, mid: int, *_: object) -> None:
        self.fences.answered(mid)

    def _on_disconnect(self, *_: object) -> None:
        self._lost()

    # --- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            client = self._client
            if client is not None:
                self._pump(client)
                self._drop(client)
                self._client = None
                self._lost()
                if self._stop.is_set():
                    return
                log.warning("lost the connection to %s", self.current_broker)
            if self._stop.wait(self.rotation.delay(RECONNECT_BASE_S, RECONNECT_CAP_S)):
                return
            addr, err = self._connect_one(self.settings.connect_timeout_s)
            if err is not None:
                failures = self.rotation.failures
                log.warning("cannot connect to %s: %s (attempt %d)", addr, err, failures)

    def _pump(self, client: mqtt.Client) -> None:
        """Serve one connection until it drops or stop() is called."""
        while not self._stop.is_set() and self._serve(client, 0.25):
            if self._rereads and time.monotonic() >= self._rereads[0]:
                self._rereads.pop(0)
                log.info("reading the retained state again (after a reconnection)")
                client.subscribe(self._subscriptions())

    def _subscriptions(self) -> list[tuple[str, int]]:
        return subscriptions(self.settings.prefix, self.shard.regions if self.shard else None)

    def _serve(self, client: mqtt.Client, wait_s: float) -> bool:
        """Write what paho queued, wait up to wait_s for input, let paho read it for at most
        SLICE_S, then let it check its keepalive. False once the connection is gone."""
        link = client.socket()
        if not isinstance(link, BufferedLink):
            return False
        try:
            if client.want_write() and client.loop_write() not in (
                mqtt.MQTT_ERR_SUCCESS,
                mqtt.MQTT_ERR_AGAIN,
            ):
                return False
            link.wait(wait_s)
            until = time.monotonic() + SLICE_S
            while link.readable():
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    return False
                if self._stop.is_set() or time.monotonic() > until:
                    break
            self.intake.apply_held()
            if self.shard is not None:
                self.shard.ask_statuses(client, self.settings.prefix)
            return client.loop_misc() == mqtt.MQTT_ERR_SUCCESS and client.socket() is not None
        except Exception as exc:  # paho's state is unknown now: reconnect
            self.intake.handler_error(str(self.current_broker or "broker"), exc)
            return False
