// Jetstream clients pointed at agentnet's JSON stream, printing one JSON line per event.
//
//   node.sh jetstream-client.mjs atcute BASE_URL CURSOR [COLLECTION...]
//     the unmodified @atcute/jetstream client (requireHello, options_update, cursor),
//     with wantedCollections set to the given collections (none: everything)
//   node.sh jetstream-client.mjs zstd WS_URL DICTIONARY
//     a plain WebSocket sending `Socket-Encoding: zstd`: every message must be a binary
//     zstd frame that Node's own zstd opens with Jetstream's dictionary (the file
//     DICTIONARY); prints the events, or {"error": ...}
import { readFileSync } from 'node:fs'
import { zstdDecompressSync } from 'node:zlib'
import { JetstreamSubscription } from '@atcute/jetstream'
import WebSocket from 'ws'

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const [mode, url, ...rest] = process.argv.slice(2)

if (mode === 'atcute') {
  const [cursor, ...wantedCollections] = rest
  const subscription = new JetstreamSubscription({
    url,
    cursor: Number(cursor),
    wantedCollections,
    onError: (err) => out({ error: String(err?.message ?? err) }),
  })
  process.on('SIGTERM', () => process.exit(0))
  for await (const event of subscription) {
    out(event)
  }
} else if (mode === 'zstd') {
  const dictionary = readFileSync(rest[0])
  const ws = new WebSocket(url, { headers: { 'Socket-Encoding': 'zstd' } })
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      out({ error: 'a text message on a compressed stream' })
      return
    }
    try {
      out(JSON.parse(zstdDecompressSync(data, { dictionary }).toString('utf8')))
    } catch (err) {
      out({ error: `does not decompress with the dictionary: ${err?.message ?? err}` })
    }
  })
  ws.on('error', (err) => out({ error: String(err?.message ?? err) }))
  process.on('SIGTERM', () => process.exit(0))
} else {
  out({ error: `unknown mode ${mode}` })
  process.exit(2)
}
