// Captures real firehose frames from the reference PDS for agentnet's own fixtures.
//
// Starts @atproto/dev-env's TestNetworkNoAppView (PDS + PLC on loopback), subscribes to the
// PDS's com.atproto.sync.subscribeRepos from cursor 0, and drives accounts through what
// produces every frame type: account creation (#identity, #account, genesis #commit,
// #sync), agent.comms.* creates, updates and deletes, multi-op applyWrites, a handle change,
// and a deactivate/activate. Writes the raw frames (base64) and each account's signing
// key (did:key, from the PLC) to the path given as the first argument.
//
//   infra/pds/node.sh infra/pds/capture-frames.mjs atproto/tests/fixtures/reference-pds-frames.json
import { writeFileSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { TestNetworkNoAppView } from '@atproto/dev-env'
import WebSocket from 'ws'

const out = process.argv[2]
if (!out) throw new Error('usage: capture-frames.mjs OUT.json')

const require = createRequire(import.meta.url)
const pdsVersion = JSON.parse(readFileSync(require.resolve('@atproto/pds/package.json'))).version

const network = await TestNetworkNoAppView.create({})
const frames = []
let lastFrameAt = Date.now()
const ws = new WebSocket(`ws://127.0.0.1:${network.pds.port}/xrpc/com.atproto.sync.subscribeRepos?cursor=0`)
ws.on('message', (data) => {
  frames.push(Buffer.from(data).toString('base64'))
  lastFrameAt = Date.now()
})
await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })

const agent = network.pds.getAgent()
const accounts = {}
for (const name of ['alice', 'bob']) {
  const a = network.pds.getAgent()
  await a.createAccount({ handle: `${name}.test`, email: `${name}@test.invalid`, password: 'hunter2-agentnet' })
  accounts[name] = a
}
const alice = accounts.alice
const bob = accounts.bob
const now = () => new Date().toISOString()
const msg = (to, text) => ({
  $type: 'agent.comms.message',
  sender: alice.session.did,
  recipient: to,
  content: { kind: 'text', text },
  createdAt: now(),
})

const first = await alice.com.atproto.repo.createRecord({ repo: alice.session.did, collection: 'agent.comms.message', record: msg(bob.session.did, 'hello bob') })
const rkey = first.data.uri.split('/').pop()
await alice.com.atproto.repo.putRecord({ repo: alice.session.did, collection: 'agent.comms.message', rkey, record: msg(bob.session.did, 'hello bob, edited') })
await bob.com.atproto.repo.createRecord({ repo: bob.session.did, collection: 'agent.comms.request', record: { $type: 'agent.comms.request', sender: bob.session.did, assignee: alice.session.did, task: 'summarize the thread', createdAt: now() } })
const writes = []
for (let i = 0; i < 5; i++) {
  writes.push({ $type: 'com.atproto.repo.applyWrites#create', collection: 'agent.memory.note', value: { $type: 'agent.memory.note', summary: `note ${i}`, text: `remembered ${i}`, createdAt: now() } })
}
await alice.com.atproto.repo.applyWrites({ repo: alice.session.did, writes })
await alice.com.atproto.repo.deleteRecord({ repo: alice.session.did, collection: 'agent.comms.message', rkey })
for (let i = 0; i < 40; i++) {
  await bob.com.atproto.repo.createRecord({ repo: bob.session.did, collection: 'agent.comms.broadcast', record: { $type: 'agent.comms.broadcast', sender: bob.session.did, content: { kind: 'text', text: `status ${i}` }, topic: 'status', createdAt: now() } })
}
await alice.com.atproto.identity.updateHandle({ handle: 'alice2.test' })
await bob.com.atproto.server.deactivateAccount({})
await bob.com.atproto.server.activateAccount()

while (Date.now() - lastFrameAt < 1500) await new Promise((r) => setTimeout(r, 200))
ws.close()

// A cursor ahead of the stream gets an error frame (FutureCursor) and the stream closes.
await new Promise((resolve, reject) => {
  const ahead = new WebSocket(`ws://127.0.0.1:${network.pds.port}/xrpc/com.atproto.sync.subscribeRepos?cursor=999999999`)
  ahead.on('message', (data) => frames.push(Buffer.from(data).toString('base64')))
  ahead.on('close', resolve)
  ahead.on('error', reject)
})

const keys = {}
for (const a of [alice, bob]) {
  const doc = await (await fetch(`${network.plc.url}/${a.session.did}`)).json()
  const vm = doc.verificationMethod.find((m) => m.id.endsWith('#atproto'))
  keys[a.session.did] = { type: vm.type, publicKeyMultibase: vm.publicKeyMultibase }
}
writeFileSync(out, JSON.stringify({ source: `@atproto/pds ${pdsVersion} via @atproto/dev-env TestNetworkNoAppView`, keys, frames }, null, 1) + '\n')
console.log(`captured ${frames.length} frames from @atproto/pds ${pdsVersion} into ${out}`)
await network.close()
process.exit(0)
