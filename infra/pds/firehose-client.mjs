// The @atproto/sync Firehose client pointed at a relay: verifies every event (signatures
// and MST proofs, with DIDs resolved through the given PLC) and prints one JSON line per
// event: {seq, event, did, action?, path?}. Errors print {"error": ...}. Reconnects by
// itself from the last cursor it processed.
//
//   node.sh firehose-client.mjs ws://127.0.0.1:PORT http://PLC [startCursor]
import { Firehose, MemoryRunner } from '@atproto/sync'
import { IdResolver } from '@atproto/identity'

const [service, plcUrl, start] = process.argv.slice(2)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const idResolver = new IdResolver({ plcUrl, fetch: globalThis.fetch })
const runner = new MemoryRunner(start !== undefined ? { startCursor: Number(start) } : {})
const firehose = new Firehose({
  service,
  idResolver,
  runner,
  subscriptionReconnectDelay: 200,
  maxReconnectSeconds: 1,
  handleEvent: async (evt) => {
    if (evt.event === 'create' || evt.event === 'update' || evt.event === 'delete') {
      out({ seq: evt.seq, event: 'commit', did: evt.did, action: evt.event, path: `${evt.collection}/${evt.rkey}` })
    } else {
      out({ seq: evt.seq, event: evt.event, did: evt.did })
    }
  },
  onError: (err) => out({ error: String(err?.message ?? err) }),
})
process.on('SIGTERM', async () => { await firehose.destroy(); process.exit(0) })
firehose.start()
