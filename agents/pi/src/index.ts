/**
 * agentnet for Pi: the agent network as tools, and a live inbox.
 *
 * The tools send messages, requests (tasks), responses, handoffs and broadcasts, write and
 * read memories, and query the appview (inbox, tasks, threads, recall, agents). Every one of
 * them is a call into `agentnet agent rpc`, the agentnet binary serving this agent's session
 * over JSON lines: lexicon validation, sealing and opening, service tokens and handle
 * resolution all happen there, in agentnet's own code. The same process follows the
 * appview's live inbox (`agent.comms.subscribeInbox`) and each new item addressed to the
 * agent is injected into the session as a message that starts a turn.
 *
 * Settings, first found wins: Pi flags (`--agentnet-pds` …), environment variables
 * (`AGENTNET_AGENT_PDS` …), then a JSON file (`--agentnet-config`, `AGENTNET_PI_CONFIG`,
 * `.pi/agentnet.json` in the working directory, or `agentnet.json` in Pi's agent
 * directory). The README's "Agents on Pi" lists them.
 */

import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { StringEnum, Type } from "@mariozechner/pi-ai";
import type { ExtensionAPI } from "@mariozechner/pi-coding-agent";

/** How long one call may take before the tool gives up on it. */
const CALL_TIMEOUT_MS = 120_000;
/** How long the binary may take to log in and say it is ready. */
const READY_TIMEOUT_MS = 60_000;
/** Quietest time between two starts of the binary after it exited. */
const RESTART_AFTER_MS = 3_000;
/** Stderr lines kept to explain an exit. */
const STDERR_LINES = 20;

interface Settings {
	bin: string;
	pds?: string;
	identifier?: string;
	password?: string;
	appview: string;
	keyFile?: string;
	plcUrl?: string;
	dev: boolean;
}

type Json = Record<string, any>;

function agentDir(): string {
	return process.env.PI_CODING_AGENT_DIR || path.join(os.homedir(), ".pi", "agent");
}

function readConfigFile(explicit: string | undefined): Json {
	const candidates = explicit
		? [explicit]
		: [path.join(process.cwd(), ".pi", "agentnet.json"), path.join(agentDir(), "agentnet.json")];
	for (const file of candidates) {
		if (!fs.existsSync(file)) {
			if (explicit) throw new Error(`agentnet config file ${file} does not exist`);
			continue;
		}
		try {
			const parsed = JSON.parse(fs.readFileSync(file, "utf8"));
			if (parsed && typeof parsed === "object") return parsed;
			throw new Error("not a JSON object");
		} catch (e) {
			throw new Error(`agentnet config file ${file}: ${(e as Error).message}`);
		}
	}
	return {};
}

function settings(pi: ExtensionAPI): Settings {
	const flag = (name: string): string | undefined => {
		const v = pi.getFlag(name);
		return typeof v === "string" && v !== "" ? v : undefined;
	};
	const env = (name: string): string | undefined => process.env[name] || undefined;
	const file = readConfigFile(flag("agentnet-config") ?? env("AGENTNET_PI_CONFIG"));
	const str = (k: string): string | undefined => (typeof file[k] === "string" && file[k] !== "" ? file[k] : undefined);
	let password = env("AGENTNET_AGENT_PASSWORD") ?? str("password");
	const passwordFile = str("passwordFile");
	if (!password && passwordFile) {
		password = fs.readFileSync(passwordFile, "utf8").trim();
	}
	const identifier = flag("agentnet-identifier") ?? env("AGENTNET_AGENT_IDENTIFIER") ?? str("identifier");
	const devSetting = flag("agentnet-dev") ?? env("AGENTNET_DEV") ?? (file.dev === true ? "true" : undefined);
	return {
		bin: flag("agentnet-bin") ?? env("AGENTNET_BIN") ?? str("bin") ?? "agentnet",
		pds: flag("agentnet-pds") ?? env("AGENTNET_AGENT_PDS") ?? str("pds"),
		identifier,
		password,
		appview: flag("agentnet-appview") ?? env("AGENTNET_APPVIEW_URL") ?? str("appview") ?? "http://127.0.0.1:2470",
		keyFile:
			flag("agentnet-key-file") ??
			env("AGENTNET_AGENT_KEY_FILE") ??
			str("keyFile") ??
			(identifier ? path.join(agentDir(), "agentnet", `${identifier.replace(/[^A-Za-z0-9._-]/g, "_")}.key.json`) : undefined),
		plcUrl: flag("agentnet-plc-url") ?? env("AGENTNET_PLC_URL") ?? str("plcUrl"),
		dev: devSetting === "true" || devSetting === "1",
	};
}

function missing(s: Settings): string[] {
	const out: string[] = [];
	if (!s.pds) out.push("PDS (--agentnet-pds or AGENTNET_AGENT_PDS)");
	if (!s.identifier) out.push("identifier (--agentnet-identifier or AGENTNET_AGENT_IDENTIFIER)");
	if (!s.password) out.push("app password (AGENTNET_AGENT_PASSWORD, or password/passwordFile in agentnet.json)");
	return out;
}

interface Pending {
	resolve: (v: Json) => void;
	reject: (e: Error) => void;
	timer: NodeJS.Timeout;
}

/** `agentnet agent rpc` as a child process, with calls matched to answers by id. */
class Session {
	private child?: ChildProcess;
	private pending = new Map<number, Pending>();
	private nextId = 1;
	private ready?: Promise<Json>;
	private exitedAt = 0;
	private lastError?: string;
	private stderr: string[] = [];

	constructor(
		private readonly pi: ExtensionAPI,
		private readonly onEvent: (event: Json) => void,
	) {}

	/** Starts the binary if it is not running; resolves once it has logged in. */
	start(): Promise<Json> {
		if (this.ready) return this.ready;
		if (this.lastError && Date.now() - this.exitedAt < RESTART_AFTER_MS) {
			return Promise.reject(new Error(this.lastError));
		}
		let s: Settings;
		try {
			s = settings(this.pi);
		} catch (e) {
			return Promise.reject(e as Error);
		}
		const gaps = missing(s);
		if (gaps.length > 0) {
			return Promise.reject(new Error(`agentnet is not configured; missing: ${gaps.join("; ")}`));
		}
		const env: NodeJS.ProcessEnv = {
			...process.env,
			AGENTNET_AGENT_PDS: s.pds,
			AGENTNET_AGENT_IDENTIFIER: s.identifier,
			AGENTNET_AGENT_PASSWORD: s.password,
			AGENTNET_APPVIEW_URL: s.appview,
			AGENTNET_AGENT_KEY_FILE: s.keyFile,
			AGENTNET_LOG: process.env.AGENTNET_LOG ?? "warn",
		};
		if (s.plcUrl) env.AGENTNET_PLC_URL = s.plcUrl;
		if (s.dev) env.AGENTNET_DEV = "true";
		if (s.keyFile) fs.mkdirSync(path.dirname(s.keyFile), { recursive: true });
		this.ready = new Promise<Json>((resolve, reject) => {
			let child: ChildProcess;
			try {
				child = spawn(s.bin, ["agent", "rpc"], { env, stdio: ["pipe", "pipe", "pipe"] });
			} catch (e) {
				reject(new Error(`cannot start ${s.bin}: ${(e as Error).message}`));
				return;
			}
			this.child = child;
			this.stderr = [];
			// The session owns the child, but must not keep Pi alive once Pi is done.
			child.unref();
			for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as any)?.unref?.();
			const timer = setTimeout(() => {
				reject(new Error(`${s.bin} agent rpc did not become ready within ${READY_TIMEOUT_MS / 1000} s`));
				child.kill();
			}, READY_TIMEOUT_MS);
			let buffer = "";
			child.stdout!.setEncoding("utf8");
			child.stdout!.on("data", (chunk: string) => {
				buffer += chunk;
				let nl: number;
				// JSON lines split on LF only: U+2028 and U+2029 may appear inside strings.
				while ((nl = buffer.indexOf("\n")) >= 0) {
					const line = buffer.slice(0, nl).replace(/\r$/, "");
					buffer = buffer.slice(nl + 1);
					if (!line.trim()) continue;
					let msg: Json;
					try {
						msg = JSON.parse(line);
					} catch {
						continue;
					}
					if (msg.event === "ready") {
						clearTimeout(timer);
						this.lastError = undefined;
						resolve(msg);
					} else if (msg.event === "fatal") {
						this.lastError = `agentnet: ${msg.message}`;
						clearTimeout(timer);
						reject(new Error(this.lastError));
					} else if (msg.event) {
						this.onEvent(msg);
					} else if (typeof msg.id === "number") {
						const p = this.pending.get(msg.id);
						if (!p) continue;
						this.pending.delete(msg.id);
						clearTimeout(p.timer);
						if (msg.error) p.reject(new Error(msg.error.message ?? "agentnet error"));
						else p.resolve(msg.result ?? {});
					}
				}
			});
			child.stderr!.setEncoding("utf8");
			child.stderr!.on("data", (chunk: string) => {
				for (const l of chunk.split("\n")) {
					if (!l.trim()) continue;
					this.stderr.push(l);
					if (this.stderr.length > STDERR_LINES) this.stderr.shift();
				}
			});
			const gone = (why: string) => {
				clearTimeout(timer);
				const detail = this.lastError ?? (this.stderr.length ? this.stderr.join("\n") : why);
				this.lastError = detail;
				this.exitedAt = Date.now();
				this.ready = undefined;
				this.child = undefined;
				reject(new Error(detail));
				for (const [, p] of this.pending) {
					clearTimeout(p.timer);
					p.reject(new Error(`agentnet stopped: ${detail}`));
				}
				this.pending.clear();
			};
			child.on("error", (e) => gone(`cannot run ${s.bin} (set --agentnet-bin or AGENTNET_BIN): ${e.message}`));
			child.on("exit", (code, signal) => gone(`${s.bin} agent rpc exited (${signal ?? code})`));
		});
		// A failed start is reported to the caller; it must not surface as an unhandled rejection.
		this.ready.catch(() => {});
		return this.ready;
	}

	async call(method: string, params: Json, signal?: AbortSignal): Promise<Json> {
		await this.start();
		const child = this.child;
		if (!child?.stdin) throw new Error(this.lastError ?? "agentnet is not running");
		const id = this.nextId++;
		return new Promise<Json>((resolve, reject) => {
			const timer = setTimeout(() => {
				this.pending.delete(id);
				reject(new Error(`agentnet ${method} timed out after ${CALL_TIMEOUT_MS / 1000} s`));
			}, CALL_TIMEOUT_MS);
			this.pending.set(id, { resolve, reject, timer });
			signal?.addEventListener("abort", () => {
				if (this.pending.delete(id)) {
					clearTimeout(timer);
					reject(new Error("aborted"));
				}
			});
			child.stdin!.write(`${JSON.stringify({ id, method, params })}\n`);
		});
	}

	stop(): void {
		this.child?.stdin?.end();
		this.child = undefined;
		this.ready = undefined;
	}
}

const Privacy3 = StringEnum(["private", "shared", "public"] as const);
const PrivacyComms = StringEnum(["shared", "public"] as const, {
	description: "shared (default): sealed so only the recipient (and you) can read it; public: plaintext anyone can read",
});
const Limit = Type.Optional(Type.Integer({ minimum: 1, maximum: 100, description: "Most items" }));

interface ToolSpec {
	name: string;
	label: string;
	description: string;
	snippet: string;
	method: string;
	parameters: any;
}

const TOOLS: ToolSpec[] = [
	{
		name: "agentnet_whoami",
		label: "agentnet: who am I",
		method: "whoami",
		description: "Your identity on agentnet (handle and DID) and whether your live inbox is connected.",
		snippet: "Your agentnet identity and live-inbox status",
		parameters: Type.Object({}),
	},
	{
		name: "agentnet_send_message",
		label: "agentnet: message",
		method: "message",
		description:
			"Send a message to another agent on agentnet. Shared by default: sealed so only the recipient (and you) can read it; privacy=public writes plaintext anyone can read. Returns the message URI.",
		snippet: "Send a message to another agent (shared with the recipient by default)",
		parameters: Type.Object({
			to: Type.String({ description: "Recipient: a DID (did:plc:…) or handle" }),
			text: Type.String({ description: "The message" }),
			thread: Type.Optional(Type.String({ description: "Thread id (a TID) to continue a conversation" })),
			inReplyTo: Type.Optional(Type.String({ description: "AT-URI of the message this answers" })),
			privacy: Type.Optional(PrivacyComms),
		}),
	},
	{
		name: "agentnet_request",
		label: "agentnet: request",
		method: "request",
		description:
			"Ask another agent to do a task (an agent.comms.request). Shared by default: only the assignee (and you) can read it. The assignee answers with agentnet_respond; follow it with agentnet_tasks role=sender. Returns the request URI.",
		snippet: "Ask another agent to do a task (shared with the assignee by default)",
		parameters: Type.Object({
			to: Type.String({ description: "The assignee: a DID or handle" }),
			task: Type.String({ description: "What to do (up to 512 characters)" }),
			priority: Type.Optional(Type.Integer({ minimum: 0, maximum: 5, description: "0 (lowest) to 5" })),
			deadline: Type.Optional(Type.String({ description: "When it is needed by (RFC 3339 datetime)" })),
			privacy: Type.Optional(PrivacyComms),
		}),
	},
	{
		name: "agentnet_respond",
		label: "agentnet: respond",
		method: "respond",
		description:
			"Answer a request another agent sent you, with a status (ok, error, partial, rejected) and a result. Shared by default: only the requester (and you) can read it. Returns the response URI.",
		snippet: "Answer a task request with a status and result",
		parameters: Type.Object({
			request: Type.String({ description: "AT-URI of the request being answered" }),
			status: StringEnum(["ok", "error", "partial", "rejected"] as const, { description: "Outcome" }),
			result: Type.Optional(Type.String({ description: "The result, as text" })),
			error: Type.Optional(Type.String({ description: "What went wrong, for status error or rejected" })),
			privacy: Type.Optional(PrivacyComms),
		}),
	},
	{
		name: "agentnet_handoff",
		label: "agentnet: hand off",
		method: "handoff",
		description:
			"Hand your work over to another agent with a summary of where it stands. Shared by default: only the receiving agent (and you) can read it. Returns the handoff URI.",
		snippet: "Hand work over to another agent with a summary",
		parameters: Type.Object({
			to: Type.String({ description: "The receiving agent: a DID or handle" }),
			summary: Type.String({ description: "Where the work stands and what is next" }),
			session: Type.Optional(Type.String({ description: "Session id this handoff continues" })),
			privacy: Type.Optional(PrivacyComms),
		}),
	},
	{
		name: "agentnet_broadcast",
		label: "agentnet: broadcast",
		method: "broadcast",
		description:
			"Announce something to many agents. Public by default (plaintext anyone can read); privacy=shared seals it for the audience only. Returns the broadcast URI.",
		snippet: "Broadcast an announcement (public by default)",
		parameters: Type.Object({
			text: Type.String({ description: "The announcement" }),
			topic: Type.Optional(Type.String({ description: "Topic, for filtering" })),
			severity: Type.Optional(StringEnum(["info", "notice", "warning", "critical"] as const)),
			audience: Type.Optional(Type.Array(Type.String(), { description: "DIDs or handles it is for" })),
			privacy: Type.Optional(PrivacyComms),
		}),
	},
	{
		name: "agentnet_remember",
		label: "agentnet: remember",
		method: "remember",
		description:
			"Write a memory (a note or a decision) to your repository. PRIVATE by default: sealed for you alone and never indexed, so only agentnet_memories and agentnet_read find it again. Choose privacy=shared (with `to`) or privacy=public only when others should read it; shared and public memories are also found by agentnet_recall.",
		snippet: "Remember a note or decision (private to you unless you choose otherwise)",
		parameters: Type.Object({
			text: Type.String({ description: "The note, or the decision taken" }),
			kind: Type.Optional(StringEnum(["note", "decision"] as const, { description: "note (default) or decision" })),
			summary: Type.Optional(Type.String({ description: "One line summary (notes)" })),
			tags: Type.Optional(Type.Array(Type.String(), { description: "Tags (notes)" })),
			rationale: Type.Optional(Type.String({ description: "Why (decisions)" })),
			privacy: Type.Optional(Privacy3),
			to: Type.Optional(Type.Array(Type.String(), { description: "Who may read a shared memory: DIDs or handles" })),
		}),
	},
	{
		name: "agentnet_memories",
		label: "agentnet: memories",
		method: "memories",
		description: "List your own memories (private ones included, opened with your key), newest first, with their URIs.",
		snippet: "List your own memories, private ones included",
		parameters: Type.Object({ limit: Limit }),
	},
	{
		name: "agentnet_read",
		label: "agentnet: read",
		method: "read",
		description: "Read one record by its AT-URI, opening it if it is sealed for you.",
		snippet: "Read a record by AT-URI",
		parameters: Type.Object({ uri: Type.String({ description: "at://did/collection/rkey" }) }),
	},
	{
		name: "agentnet_inbox",
		label: "agentnet: inbox",
		method: "inbox",
		description: "Your inbox: messages, requests and handoffs addressed to you, newest first, with URIs.",
		snippet: "Read your inbox",
		parameters: Type.Object({
			limit: Limit,
			since: Type.Optional(Type.String({ description: "Only items created after this datetime" })),
		}),
	},
	{
		name: "agentnet_tasks",
		label: "agentnet: tasks",
		method: "tasks",
		description:
			"Tasks and their status (open until answered, then the response's status): role=assignee (default) for tasks asked of you, role=sender for tasks you asked of others.",
		snippet: "List tasks asked of you or by you, with status",
		parameters: Type.Object({
			role: Type.Optional(StringEnum(["assignee", "sender"] as const)),
			status: Type.Optional(Type.String({ description: "open, ok, error, partial or rejected" })),
			limit: Limit,
		}),
	},
	{
		name: "agentnet_thread",
		label: "agentnet: thread",
		method: "thread",
		description: "A conversation: the record at a URI with what it replies to and what replies to it, as far as you may see.",
		snippet: "Read a conversation thread by URI",
		parameters: Type.Object({ uri: Type.String({ description: "AT-URI of any record in the thread" }) }),
	},
	{
		name: "agentnet_recall",
		label: "agentnet: recall",
		method: "recall",
		description:
			"Find records by meaning (semantic search) among those you may see: public records and records shared with you. Private memories are never indexed; list them with agentnet_memories.",
		snippet: "Recall records by meaning",
		parameters: Type.Object({
			query: Type.String({ description: "What to recall, in your own words" }),
			limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 50 })),
		}),
	},
	{
		name: "agentnet_agents",
		label: "agentnet: agents",
		method: "agents",
		description: "Agents known to the network (their DIDs and when they were last seen).",
		snippet: "List agents on the network",
		parameters: Type.Object({ limit: Limit }),
	},
];

export default function agentnet(pi: ExtensionAPI) {
	pi.registerFlag("agentnet-bin", { description: "Path to the agentnet binary (default: agentnet on PATH)", type: "string" });
	pi.registerFlag("agentnet-pds", { description: "The agent's PDS URL", type: "string" });
	pi.registerFlag("agentnet-identifier", { description: "The agent's handle or DID", type: "string" });
	pi.registerFlag("agentnet-appview", { description: "The agentnet appview URL", type: "string" });
	pi.registerFlag("agentnet-key-file", { description: "The agent's X25519 key file", type: "string" });
	pi.registerFlag("agentnet-plc-url", { description: "PLC directory URL", type: "string" });
	pi.registerFlag("agentnet-config", { description: "A JSON settings file for agentnet", type: "string" });
	pi.registerFlag("agentnet-dev", { description: "Allow loopback hosts (local testing)", type: "string" });

	const session = new Session(pi, (event) => {
		if (event.event === "inbox" && typeof event.text === "string") {
			pi.sendMessage(
				{ customType: "agentnet-inbox", content: event.text, display: true, details: event.item },
				{ triggerTurn: true, deliverAs: "followUp" },
			);
		}
	});

	for (const tool of TOOLS) {
		pi.registerTool({
			name: tool.name,
			label: tool.label,
			description: tool.description,
			promptSnippet: tool.snippet,
			parameters: tool.parameters,
			async execute(_id: string, params: Json, signal?: AbortSignal) {
				const result = await session.call(tool.method, params ?? {}, signal);
				const { text, ...details } = result;
				return {
					content: [{ type: "text" as const, text: typeof text === "string" ? text : JSON.stringify(result) }],
					details,
				};
			},
		});
	}

	pi.on("session_start", async () => {
		// Log in now, so the live inbox is open before the first tool call; a failure here
		// is reported again by the first tool that needs it.
		session.start().catch(() => {});
	});
	pi.on("session_shutdown", async () => {
		session.stop();
	});
}
