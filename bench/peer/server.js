// The peer for the receiver benchmark: what ENS integrations typically hand-write — one Node
// process, Express, the raw body kept for the HMAC, crypto.createHmac + timingSafeEqual, the key
// base64-decoded first and as text second (docs/ens-protocol.md §6.3), JSON.parse, then 200.
//
//   node server.js KEYFILE [PATH]    # prints "listening on http://127.0.0.1:PORT"
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const express = require('express');

const keyText = fs.readFileSync(process.argv[2], 'utf8').split('\n')[0].trim();
const keys = [Buffer.from(keyText, 'base64'), Buffer.from(keyText, 'utf8')];
const path = process.argv[3] || '/ens/bench';

function verified(body, header) {
  if (typeof header !== 'string') return false;
  const sig = Buffer.from(header, 'base64');
  if (sig.length !== 32) return false;
  return keys.some((k) => crypto.timingSafeEqual(crypto.createHmac('sha256', k).update(body).digest(), sig));
}

const app = express();
app.post(path, express.raw({ type: 'application/json', limit: '8mb' }), (req, res) => {
  if (!Buffer.isBuffer(req.body) || !verified(req.body, req.get('x-sfmc-ens-signature'))) {
    return res.status(401).send('bad signature\n');
  }
  let events;
  try {
    events = JSON.parse(req.body);
  } catch (e) {
    return res.status(400).send('not JSON\n');
  }
  if (!Array.isArray(events)) return res.status(400).send('not a batch\n');
  res.sendStatus(200);
});

const server = app.listen(0, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
