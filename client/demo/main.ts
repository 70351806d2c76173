/**
 * The demo page the Worker serves at `/` in local development: two tabs in the
 * same room see each other, chat and show each other's camera.
 *
 * URL: `/?room=lobby` or `/#lobby`. Extra query parameters, mainly for tests:
 * `path` (force a rung), `camera=0` (no camera), `name`,
 * `rung_timeout_ms`, `upgrade_interval_ms`, `join=0` (do not join: tests call
 * `window.SwitchboardSDK.Switchboard.join` themselves).
 */
import { Switchboard, SwitchboardError, type Path, type Room } from "../src/index.js";

interface ChatMessage {
  id: string;
  from: string;
  text: string;
  via: "datachannel" | "relay" | "sfu" | "self";
}

/** What tests (and curious developers in the console) can inspect. */
interface DemoHandle {
  room: Room | null;
  messages: ChatMessage[];
  errors: string[];
  /** Every rung change, in order, with the time it happened (`Date.now()`): the ladder made observable. */
  paths: Array<{ peerId: string; path: Path; previous: Path | null; at: number }>;
  cameraStarted: boolean;
  /** Every signaling state change after the join (reconnects, resumes). */
  signaling: Array<{ state: string; resumed?: boolean; reason?: string; at: number }>;
  sendChat(text: string): Promise<void>;
}

declare global {
  interface Window {
    switchboardDemo: DemoHandle;
    SwitchboardSDK: { Switchboard: typeof Switchboard; SwitchboardError: typeof SwitchboardError };
  }
}

const params = new URLSearchParams(location.search);
const roomName = params.get("room") ?? (location.hash.slice(1) || "lobby");
const forced = params.get("path");
const displayName = params.get("name") ?? `guest-${Math.floor(Math.random() * 1000)}`;

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

const handle: DemoHandle = {
  room: null,
  messages: [],
  errors: [],
  paths: [],
  cameraStarted: false,
  signaling: [],
  sendChat: async () => {
    throw new Error("not joined yet");
  },
};
window.switchboardDemo = handle;
window.SwitchboardSDK = { Switchboard, SwitchboardError };

function numberParam(name: string): number | undefined {
  const value = params.get(name);
  return value === null ? undefined : Number(value);
}

function showError(text: string): void {
  handle.errors.push(text);
  const box = $("errors");
  box.hidden = false;
  box.textContent = text;
}

function appendMessage(message: ChatMessage, who: string): void {
  handle.messages.push(message);
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  item.append(name, document.createTextNode(message.text));
  if (message.via !== "self") {
    const via = document.createElement("span");
    via.className = "via";
    via.textContent =
      message.via === "datachannel" ? "via DataChannel" : message.via === "sfu" ? "via relay SFU" : "via WebSocket relay";
    item.append(via);
  }
  item.dataset.messageId = message.id;
  const list = $("messages");
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

function renderPeers(room: Room): void {
  const list = $("peers");
  list.replaceChildren();
  const peers = room.peers;
  if (peers.length === 0) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "nobody else yet: open this page in another tab";
    list.append(empty);
    return;
  }
  for (const peer of peers) {
    const item = document.createElement("li");
    item.dataset.peerId = peer.peerId;
    item.dataset.path = peer.path ?? "";
    const label = document.createElement("span");
    const name = (peer.meta as { name?: string } | null)?.name;
    label.textContent = name ? `${name} (${peer.peerId.slice(0, 8)})` : peer.peerId.slice(0, 8);
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = peer.state;
    const path = document.createElement("span");
    path.className = "pill path";
    path.dataset.path = peer.path ?? "";
    path.textContent = peer.path ?? "…";
    item.append(label, state, path);
    list.append(item);
  }
}

function remoteTile(peerId: string, label: string): HTMLVideoElement {
  const id = `tile-${peerId}`;
  let tile = document.getElementById(id);
  if (!tile) {
    tile = document.createElement("figure");
    tile.className = "tile";
    tile.id = id;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;
    const caption = document.createElement("figcaption");
    caption.textContent = label;
    tile.append(video, caption);
    $("tiles").append(tile);
  }
  return tile.querySelector("video") as HTMLVideoElement;
}

async function startCamera(room: Room): Promise<void> {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    $<HTMLVideoElement>("local-video").srcObject = stream;
    for (const track of stream.getTracks()) room.addTrack(track, stream);
    handle.cameraStarted = true;
  } catch (error) {
    showError(`camera unavailable: ${String(error)}`);
  }
}

async function main(): Promise<void> {
  $("room-name").textContent = roomName;
  const select = $<HTMLSelectElement>("force-path");
  select.value = forced ?? "";

  const ladder: { rungTimeoutMs?: number; upgradeIntervalMs?: number } = {};
  const rungTimeout = numberParam("rung_timeout_ms");
  const upgradeInterval = numberParam("upgrade_interval_ms");
  if (rungTimeout !== undefined) ladder.rungTimeoutMs = rungTimeout;
  if (upgradeInterval !== undefined) ladder.upgradeIntervalMs = upgradeInterval;

  let room: Room;
  try {
    room = await Switchboard.join(location.origin, roomName, {
      meta: { name: displayName },
      forcePath: (forced || null) as Path | null,
      ladder,
    });
  } catch (error) {
    showError(error instanceof SwitchboardError ? `${error.code}: ${error.message}` : String(error));
    $("signaling").textContent = "closed";
    $("signaling").dataset.state = "closed";
    return;
  }
  handle.room = room;
  $("self-id").textContent = room.peerId.slice(0, 8);
  $("signaling").textContent = "open";
  $("signaling").dataset.state = "open";

  const names = new Map<string, string>();
  const nameOf = (peerId: string): string => names.get(peerId) ?? peerId.slice(0, 8);
  for (const peer of room.peers) {
    const name = (peer.meta as { name?: string } | null)?.name;
    if (name) names.set(peer.peerId, name);
  }

  room.on("signaling-state", ({ state, resumed, reason }) => {
    const entry: DemoHandle["signaling"][number] = { state, at: Date.now() };
    if (resumed !== undefined) entry.resumed = resumed;
    if (reason !== undefined) entry.reason = reason;
    handle.signaling.push(entry);
    const pill = $("signaling");
    pill.dataset.state = state;
    pill.textContent = state === "open" && resumed ? "open (resumed)" : state;
    $("self-id").textContent = room.peerId.slice(0, 8);
  });
  room.on("peer-joined", ({ peerId, meta }) => {
    const name = (meta as { name?: string } | null)?.name;
    if (name) names.set(peerId, name);
    renderPeers(room);
  });
  room.on("peer-left", ({ peerId }) => {
    document.getElementById(`tile-${peerId}`)?.remove();
    renderPeers(room);
  });
  room.on("path", (event) => {
    handle.paths.push({ ...event, at: Date.now() });
    renderPeers(room);
  });
  room.on("connection-state", () => renderPeers(room));
  room.on("track", ({ peerId, track }) => {
    if (track.kind !== "video") return;
    remoteTile(peerId, nameOf(peerId)).srcObject = new MediaStream([track]);
  });
  room.on("data", ({ from, data, via }) => {
    const message = data as Partial<ChatMessage> | null;
    if (!message || typeof message.text !== "string" || typeof message.id !== "string") return;
    appendMessage({ id: message.id, from, text: message.text, via }, nameOf(from));
  });
  room.on("error", (error) => {
    const cause = error.cause instanceof Error ? ` (${error.cause.name}: ${error.cause.message})` : "";
    showError(`${error.code}: ${error.message}${cause}`);
  });

  select.addEventListener("change", () => room.forcePath((select.value || null) as Path | null));

  let counter = 0;
  handle.sendChat = async (text: string) => {
    counter += 1;
    const id = `${room.peerId}-${counter}`;
    appendMessage({ id, from: room.peerId, text, via: "self" }, "you");
    await room.send("*", { id, text });
  };
  $<HTMLFormElement>("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>("chat-input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    handle.sendChat(text).catch((error: unknown) => showError(String(error)));
  });

  renderPeers(room);
  if (params.get("camera") !== "0") await startCamera(room);
}

if (params.get("join") !== "0") main().catch((error: unknown) => showError(String(error)));
