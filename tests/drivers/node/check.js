'use strict'
// Runs node-postgres (pg) and pg-copy-streams against the endpoint named by PGHOST, PGPORT, PGDATABASE,
// PGUSER, PGPASSWORD and PGSSLROOTCERT (TLS with full verification), printing one JSON object per
// check and exiting 1 when any check failed. With PGWARD_QUERIES it runs the queries of that file
// instead (queries.js).

const fs = require('node:fs')
const { pipeline } = require('node:stream/promises')
const { Readable, Writable } = require('node:stream')
const pg = require('pg')
const { to: copyTo, from: copyFrom } = require('pg-copy-streams')

let failures = 0

function emit(check, ok, detail, started) {
  if (!ok) failures++
  const line = { check, ok, detail }
  if (started !== undefined) line.ms = Date.now() - started
  process.stdout.write(JSON.stringify(line) + '\n')
}

function describe(err) {
  if (err && err.code) return `[${err.code}] ${err.message}`
  return String(err && err.stack ? err.message : err)
}

function require_(cond, message) {
  if (!cond) throw new Error(message)
}

function config() {
  const rootCert = process.env.PGSSLROOTCERT
  return {
    host: process.env.PGHOST || '127.0.0.1',
    port: Number(process.env.PGPORT || 5432),
    database: process.env.PGDATABASE,
    user: process.env.PGUSER,
    password: process.env.PGPASSWORD,
    application_name: 'pgward-node-postgres-check',
    connectionTimeoutMillis: 20000,
    // verify-full: the chain must lead to our CA and the certificate must name the host
    // (tls.checkServerIdentity; IP addresses are matched against IP SANs).
    ssl: { ca: fs.readFileSync(rootCert), rejectUnauthorized: true },
  }
}

async function simpleQuery(client) {
  const r = await client.query('select count(*) from shop.customers')
  const n = Number(r.rows[0].count)
  require_(n >= 1000, `expected >= 1000 customers, got ${n}`)
  return { customers: n }
}

async function prepared(client) {
  const names = {}
  for (let round = 0; round < 2; round++) {
    for (const id of [1, 2, 3, 500, 1000]) {
      // A named statement: parsed once on the server, then Bind/Execute only.
      const r = await client.query({ name: 'pgward_customer_name', text: 'select name from shop.customers where id = $1', values: [id] })
      require_(r.rows.length === 1 && r.rows[0].name, `no customer with id ${id}`)
      if (round === 1) require_(names[id] === r.rows[0].name, `different name on re-execution for id ${id}`)
      names[id] = r.rows[0].name
    }
  }
  const r = await client.query('select count(*) from shop.customers where name = $1', [names[1]])
  const matches = Number(r.rows[0].count)
  require_(matches >= 1, 'the text parameter matched no rows')
  return { names: Object.keys(names).length, text_param_matches: matches }
}

// Binary results. node-postgres asks for them with `binary: true` (and then also sends parameters in
// binary), but pg 8.x decodes every DataRow value as UTF-8 before the type parser sees it, so a binary
// value survives only when its bytes are ASCII (pg-types' own binary parsers then see mangled input:
// an int8 4000 comes back as 4079). The check therefore reads values whose binary encodings are
// ASCII-safe (int4/int8 below 128 and text, whose binary format is its UTF-8 bytes), decodes the raw
// bytes itself and compares them with the same query in text format.
const binaryDecoders = {
  20: (b) => b.readBigInt64BE(0).toString(), // int8
  23: (b) => b.readInt32BE(0), // int4
  25: (b) => b.toString('utf8'), // text
}
const rawBinaryTypes = {
  getTypeParser(oid, format) {
    if (format === 'binary') {
      const decode = binaryDecoders[oid]
      if (!decode) throw new Error(`no binary decoder for type ${oid}`)
      return (value) => {
        if (typeof value === 'string' && value.includes('\ufffd')) throw new Error(`type ${oid}: value mangled by UTF-8 decoding`)
        return decode(Buffer.isBuffer(value) ? value : Buffer.from(value, 'utf8'))
      }
    }
    return pg.types.getTypeParser(oid, format)
  },
}

async function binaryResults(client) {
  const text =
    'select id::int4 as id, customer_id::int4 as customer_id, status, count(*) over ()::int8 as n ' +
    'from shop.orders where id between 1 and $1 and customer_id < 128 order by id'
  // A Buffer parameter goes out as is, in binary: an int4 in network byte order.
  const param = Buffer.alloc(4)
  param.writeInt32BE(120)
  const b = await client.query({ text, values: [param], binary: true, types: rawBinaryTypes })
  const formats = b.fields.map((f) => f.format)
  require_(formats.every((f) => f === 'binary'), `result formats ${formats}`)
  const t = await client.query(text.replace('$1', '120'))
  require_(b.rows.length === t.rows.length, `${b.rows.length} binary rows vs ${t.rows.length} text rows`)
  for (let i = 0; i < t.rows.length; i++) {
    const br = b.rows[i]
    const tr = t.rows[i]
    require_(
      br.id === tr.id && br.customer_id === tr.customer_id && br.status === tr.status && br.n === String(tr.n),
      `row ${i}: binary ${JSON.stringify(br)} vs text ${JSON.stringify(tr)}`
    )
  }
  require_(b.rows.length > 0, 'no rows')
  return { rows: b.rows.length, first: b.rows[0], formats }
}

async function transaction(client) {
  await client.query('begin')
  try {
    await client.query('create temp table pgward_node_tx (id int, note text)')
    for (let i = 0; i < 10; i++) await client.query('insert into pgward_node_tx values ($1, $2)', [i, `row ${i}`])
    const r = await client.query('select count(*)::int as n from pgward_node_tx')
    require_(r.rows[0].n === 10, `expected 10 rows inside the transaction, got ${r.rows[0].n}`)
  } finally {
    await client.query('rollback')
  }
  const r = await client.query("select to_regclass('pg_temp.pgward_node_tx') is null as gone")
  require_(r.rows[0].gone === true, 'the temp table survived the rollback')
  return { rolled_back: true }
}

async function copyOut(client) {
  let bytes = 0
  let lines = 0
  const stream = client.query(copyTo('COPY shop.orders TO STDOUT'))
  await pipeline(
    stream,
    new Writable({
      write(chunk, _enc, cb) {
        bytes += chunk.length
        for (const c of chunk) if (c === 10) lines++
        cb()
      },
    })
  )
  const r = await client.query('select count(*)::int as n from shop.orders')
  require_(lines === r.rows[0].n && r.rows[0].n >= 5000, `COPY TO gave ${lines} lines, table has ${r.rows[0].n}`)
  require_(Number(stream.rowCount) === lines, `COPY TO reported ${stream.rowCount} rows`)
  return { lines, bytes }
}

async function copyIn(client) {
  await client.query('create temp table pgward_node_copy (id int, amount numeric(10,2), note text)')
  try {
    function* rows() {
      for (let i = 1; i <= 2000; i++) yield `${i}\t${i}.25\tnote ${i}\n`
    }
    const stream = client.query(copyFrom('COPY pgward_node_copy FROM STDIN'))
    await pipeline(Readable.from(rows()), stream)
    const r = await client.query('select count(*)::int as n, sum(amount)::text as total from pgward_node_copy')
    require_(r.rows[0].n === 2000 && r.rows[0].total === '2001500.00', `table has ${r.rows[0].n} rows, sum ${r.rows[0].total}`)
    require_(Number(stream.rowCount) === 2000, `COPY FROM reported ${stream.rowCount} rows`)
    return { rows: r.rows[0].n }
  } finally {
    await client.query('drop table if exists pgward_node_copy')
  }
}

async function cancel(client) {
  const started = Date.now()
  const query = new pg.Query('select pg_sleep(30)')
  const done = new Promise((resolve) => {
    query.on('error', (err) => resolve(err))
    query.on('end', () => resolve(null))
  })
  client.query(query)
  await new Promise((r) => setTimeout(r, 500))
  // node-postgres cancels through a second Client with the same settings: it opens a connection and
  // sends a CancelRequest with the first client's backend key.
  new pg.Client(config()).cancel(client, query)
  const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), 10000))
  const err = await Promise.race([done, timeout])
  const secs = (Date.now() - started) / 1000
  require_(err !== 'timeout', `no answer ${secs} s after the cancel`)
  require_(err && err.code === '57014', `expected SQLSTATE 57014, got ${err ? describe(err) : 'success'}`)
  const r = await client.query('select 42 as v')
  require_(r.rows[0].v === 42, 'the session is unusable after the cancel')
  return { sqlstate: err.code, seconds: secs }
}

async function errorRecovery(client) {
  let code = null
  try {
    await client.query('select 1/0')
  } catch (err) {
    code = err.code
  }
  require_(code === '22012', `expected SQLSTATE 22012, got ${code}`)
  code = null
  try {
    await client.query('select $1::int / 0', [1])
  } catch (err) {
    code = err.code
  }
  require_(code === '22012', `extended protocol: expected SQLSTATE 22012, got ${code}`)
  const r = await client.query('select $1::int + 1 as v', [41])
  require_(r.rows[0].v === 42, 'wrong answer after the error')
  return { sqlstate: '22012', then: 42 }
}

async function main() {
  if (!process.env.PGSSLROOTCERT) {
    emit('connect_tls', false, 'PGSSLROOTCERT is not set: full TLS verification is required')
    process.exit(1)
  }
  let started = Date.now()
  const client = new pg.Client(config())
  client.on('error', (err) => emit('connection_error', false, describe(err)))
  try {
    await client.connect()
  } catch (err) {
    emit('connect_tls', false, describe(err), started)
    process.exit(1)
  }
  const sock = client.connection.stream
  emit('connect_tls', Boolean(sock.encrypted && sock.authorized), {
    driver: `pg ${require('pg/package.json').version}`,
    tls_version: sock.getProtocol ? sock.getProtocol() : null,
    authorized: sock.authorized,
  }, started)

  if (process.env.PGWARD_QUERIES) {
    await require('./queries').runQueries(client, process.env.PGWARD_QUERIES, emit)
    await client.end()
    // Not process.exit(): its output can be large, and exiting would cut off what a pipe has not
    // taken yet.
    process.exitCode = failures === 0 ? 0 : 1
    return
  }
  const checks = [
    ['simple_query', simpleQuery],
    ['prepared_statement', prepared],
    ['binary_results', binaryResults],
    ['transaction_rollback', transaction],
    ['copy_out', copyOut],
    ['copy_in', copyIn],
    ['cancel', cancel],
    ['error_recovery', errorRecovery],
  ]
  for (const [name, fn] of checks) {
    started = Date.now()
    try {
      emit(name, true, await fn(client), started)
    } catch (err) {
      emit(name, false, describe(err), started)
    }
  }
  await client.end()
  process.exit(failures === 0 ? 0 : 1)
}

main().catch((err) => {
  emit('unexpected', false, describe(err))
  process.exit(1)
})
