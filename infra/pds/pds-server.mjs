// A reference PDS + PLC (@atproto/dev-env TestNetworkNoAppView) on loopback, driven by
// agentnet's tests over stdin/stdout, one JSON object per line.
//
// Prints {"pds": URL, "plc": URL} once ready, then answers each command:
//   {"op":"accounts","names":[...]}        -> {"dids": {name: did}}
//   {"op":"scenario","rounds":N}           -> {"ops": [{did, action, path}, ...]} in commit order
//   {"op":"serviceAuth","name","aud","lxm"} -> {"token"} from com.atproto.server.getServiceAuth
//   {"op":"exit"}                          -> closes the network and exits
import { createInterface } from 'node:readline'
import { TestNetworkNoAppView } from '@atproto/dev-env'

const network = await TestNetworkNoAppView.create({})
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
out({ pds: network.pds.url, plc: network.plc.url })

const agents = {}
const now = () => new Date().toISOString()

async function scenario(rounds) {
  const ops = []
  const names = Object.keys(agents)
  for (let r = 0; r < rounds; r++) {
    for (const [i, name] of names.entries()) {
      const a = agents[name]
      const did = a.session.did
      const peer = agents[names[(i + 1) % names.length]].session.did
      const repo = a.com.atproto.repo
      const msg = await repo.createRecord({ repo: did, collection: 'agent.comms.message', record: {
        $type: 'agent.comms.message', sender: did, recipient: peer, content: { kind: 'text', text: `round ${r} from ${name}` }, createdAt: now() } })
      const rkey = msg.data.uri.split('/').pop()
      ops.push({ did, action: 'create', path: `agent.comms.message/${rkey}` })
      await repo.putRecord({ repo: did, collection: 'agent.comms.message', rkey, record: {
        $type: 'agent.comms.message', sender: did, recipient: peer, content: { kind: 'text', text: `round ${r} from ${name}, edited` }, createdAt: now() } })
      ops.push({ did, action: 'update', path: `agent.comms.message/${rkey}` })
      const req = await repo.createRecord({ repo: did, collection: 'agent.comms.request', record: {
        $type: 'agent.comms.request', sender: did, assignee: peer, task: `task ${r}`, createdAt: now() } })
      ops.push({ did, action: 'create', path: `agent.comms.request/${req.data.uri.split('/').pop()}` })
      await repo.deleteRecord({ repo: did, collection: 'agent.comms.message', rkey })
      ops.push({ did, action: 'delete', path: `agent.comms.message/${rkey}` })
    }
  }
  return ops
}

const rl = createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  const cmd = JSON.parse(line)
  try {
    if (cmd.op === 'accounts') {
      const dids = {}
      for (const name of cmd.names) {
        const a = network.pds.getAgent()
        await a.createAccount({ handle: `${name}.test`, email: `${name}@test.invalid`, password: 'hunter2-agentnet' })
        agents[name] = a
        dids[name] = a.session.did
      }
      out({ dids })
    } else if (cmd.op === 'scenario') {
      out({ ops: await scenario(cmd.rounds ?? 1) })
    } else if (cmd.op === 'serviceAuth') {
      const res = await agents[cmd.name].com.atproto.server.getServiceAuth({ aud: cmd.aud, lxm: cmd.lxm })
      out({ token: res.data.token })
    } else if (cmd.op === 'exit') {
      break
    } else {
      out({ error: `unknown op ${cmd.op}` })
    }
  } catch (err) {
    out({ error: String(err?.stack ?? err) })
  }
}
await network.close()
process.exit(0)
