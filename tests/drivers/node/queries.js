'use strict'
// Data-driven queries for the masking tests: PGWARD_QUERIES names a file of lines
// "check<TAB>text|binary<TAB>sql". Each result is printed as one JSON object (the column formats and
// every value as a string, or the server's error); the pytest side decides what is right.

const fs = require('node:fs')

// Binary results: pg 8 decodes every DataRow value as UTF-8 before the type parser sees it (see
// check.js), so only values whose binary form is ASCII survive: text types (their binary form is the
// text) and small int4/int8 values. Anything else fails the check loudly instead of guessing.
const decoders = {
  19: (b) => b.toString('utf8'),
  20: (b) => b.readBigInt64BE(0).toString(),
  23: (b) => String(b.readInt32BE(0)),
  25: (b) => b.toString('utf8'),
  1042: (b) => b.toString('utf8'),
  1043: (b) => b.toString('utf8'),
}
const binaryTypes = {
  getTypeParser(oid, format) {
    if (format !== 'binary') return (v) => v
    const decode = decoders[oid]
    if (!decode) throw new Error(`no binary decoder for type ${oid}`)
    return (value) => {
      if (typeof value === 'string' && value.includes('\ufffd')) throw new Error(`type ${oid}: value mangled by UTF-8 decoding`)
      return decode(Buffer.isBuffer(value) ? value : Buffer.from(value, 'utf8'))
    }
  },
}
// Text results as the server sent them.
const textTypes = { getTypeParser: () => (v) => v }

async function runQueries(client, path, emit) {
  const lines = fs.readFileSync(path, 'utf8').split('\n').filter((l) => l.length > 0)
  for (const line of lines) {
    const parts = line.split('\t')
    const started = Date.now()
    if (parts.length < 3) {
      emit('queries', false, `malformed line: ${line}`, started)
      continue
    }
    const [check, mode] = parts
    const text = parts.slice(2).join('\t')
    try {
      const r =
        mode === 'binary'
          ? await client.query({ text, binary: true, types: binaryTypes, rowMode: 'array', queryMode: 'extended' })
          : await client.query({ text, types: textTypes, rowMode: 'array' })
      emit(check, true, { formats: r.fields.map((f) => (f.format === 'binary' ? 1 : 0)), rows: r.rows }, started)
    } catch (err) {
      if (err && err.code && err.severity) {
        emit(check, true, { sqlstate: err.code, message: err.message, detail: err.detail || null, hint: err.hint || null }, started)
      } else {
        emit(check, false, String(err && err.message ? err.message : err), started)
      }
    }
  }
}

module.exports = { runQueries }
