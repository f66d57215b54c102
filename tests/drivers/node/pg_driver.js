// node-postgres (`pg`) driver program: the canonical scenarios with pg.Client, named (server-prepared)
// queries, pg.Pool, pipeline mode, pg-copy-streams for COPY, one JSON line per scenario.
'use strict'

const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const c = require('./common')

const NAME = 'node-pg'
const p = c.params()

function config(user, password, extra = {}) {
  return {
    host: p.host,
    port: p.port,
    database: p.db,
    user: user || p.user,
    password: password !== undefined ? password : p.password,
    connectionTimeoutMillis: 10000,
    ssl: p.ssl ? { rejectUnauthorized: false } : false,
    ...extra,
  }
}

async function connect(user, password, extra) {
  const client = new pg.Client(config(user, password, extra))
  await client.connect()
  // An idle client that loses its server must not crash the process with an unhandled 'error'.
  client.on('error', () => {})
  return client
}

async function withClient(fn, extra) {
  const client = await connect(undefined, undefined, extra)
  try {
    return await fn(client)
  } finally {
    await client.end().catch(() => {})
  }
}

async function scalar(client, text, values) {
  const r = await client.query({ text, values, rowMode: 'array' })
  return r.rows[0][0]
}

async function table(client, cols = 'k int, v text') {
  const name = c.unique('t')
  await client.query(`CREATE TABLE ${name} (${cols})`)
  return name
}

async function login(user, password) {
  const client = await connect(user, password)
  try {
    const got = await scalar(client, 'SELECT current_user')
    c.check(got === user, `current_user is ${got}, expected ${user}`)
  } finally {
    await client.end()
  }
  let err = null
  try {
    const bad = await connect(user, password + '-wrong')
    await bad.end()
  } catch (e) {
    err = e
  }
  c.check(err, 'login with a wrong password succeeded')
  c.check(/password|auth/i.test(err.message), `unexpected login error: ${c.describe(err)}`)
  return 'wrong password refused'
}

const scenarios = {
  login_scram: () => login(p.user, p.password),
  login_md5: () => login(p.md5User, p.md5Password),

  simple_query: () =>
    withClient(async (client) => {
      const res = await client.query("SELECT 1 AS a; SELECT 'x' || 'y' AS b")
      c.check(Array.isArray(res) && res.length === 2, 'expected two result sets')
      c.check(res[0].rows[0].a === 1 && res[1].rows[0].b === 'xy', 'result values')
    }),

  param_query: () =>
    withClient(async (client) => {
      const bin = Buffer.from([0, 1, 255, 39])
      const vals = [42, 'héllo \'quoted\' \\ "', null, true, '12.345', bin]
      const r = await client.query({
        text: 'SELECT $1::int, $2::text, $3::text, $4::bool, $5::numeric, $6::bytea',
        values: vals,
        rowMode: 'array',
      })
      const row = r.rows[0]
      c.check(
        row[0] === 42 && row[1] === vals[1] && row[2] === null && row[3] === true && row[4] === '12.345' && bin.equals(row[5]),
        `round trip ${JSON.stringify(row)}`,
      )
    }),

  prepared_reuse: async () => {
    await c.runClients(p.clients, (cid) =>
      withClient(async (client) => {
        for (let j = 0; j < c.PREPARED_REUSES; j++) {
          await client.query('BEGIN')
          const r = await client.query({
            name: 'reuse_stmt',
            text: 'SELECT $1::int * 2 + $2::int AS a, $3::text AS b',
            values: [cid, j, `c${cid}`],
          })
          await client.query('COMMIT')
          c.check(r.rows[0].a === cid * 2 + j && r.rows[0].b === `c${cid}`, `client ${cid} got ${JSON.stringify(r.rows[0])} at ${j}`)
        }
      }),
    )
    return `${p.clients} clients x ${c.PREPARED_REUSES} transactions, named query`
  },

  transaction: () =>
    withClient(async (client) => {
      const other = await connect()
      const t = await table(client)
      try {
        await client.query('BEGIN')
        await client.query(`INSERT INTO ${t} VALUES (1, 'committed')`)
        await client.query('COMMIT')
        await client.query('BEGIN')
        await client.query(`INSERT INTO ${t} VALUES (2, 'rolled back')`)
        await client.query('ROLLBACK')
        const r = await other.query(`SELECT k FROM ${t} ORDER BY k`)
        c.check(JSON.stringify(r.rows.map((x) => x.k)) === '[1]', `visible rows ${JSON.stringify(r.rows)}`)
      } finally {
        await client.query(`DROP TABLE ${t}`)
        await other.end()
      }
    }),

  error_recovery: () =>
    withClient(async (client) => {
      const t = await table(client)
      try {
        await c.expectError(() => client.query('SELECT 1/0'), '22012')
        await c.expectError(() => client.query('SELECT $1::int / 0', [1]), '22012')
        c.check((await scalar(client, 'SELECT 2')) === 2, 'query after error')
        await client.query('BEGIN')
        await client.query(`INSERT INTO ${t} VALUES (1, 'x')`)
        await c.expectError(() => client.query('SELECT $1::int / 0', [1]), '22012')
        await c.expectError(() => client.query('SELECT 1'), '25P02')
        await client.query('ROLLBACK')
        c.check((await scalar(client, 'SELECT 3')) === 3, 'query after rollback')
        const n = await scalar(client, `SELECT count(*)::int FROM ${t}`)
        c.check(n === 0, `rolled-back insert visible (${n} rows)`)
      } finally {
        await client.query(`DROP TABLE ${t}`)
      }
    }),

  copy_in: () =>
    withClient(async (client) => {
      const rows = c.copyRows()
      const t = await table(client)
      try {
        const lines = rows.map(([k, v]) => `${k}\t${c.copyEscape(v)}\n`)
        await pipeline(Readable.from(lines), client.query(copyFrom(`COPY ${t} (k, v) FROM STDIN`)))
        const r = await client.query({ text: `SELECT count(*)::int, sum(k)::int FROM ${t}`, rowMode: 'array' })
        c.check(r.rows[0][0] === c.ROWS_COPY && r.rows[0][1] === (c.ROWS_COPY * (c.ROWS_COPY - 1)) / 2, `count/sum ${r.rows[0]}`)
        const v = await scalar(client, `SELECT v FROM ${t} WHERE k = 1000`)
        c.check(v === rows[1000][1], `escaped value ${v}`)
      } finally {
        await client.query(`DROP TABLE ${t}`)
      }
    }),

  copy_out: () =>
    withClient(async (client) => {
      const chunks = []
      await pipeline(
        client.query(copyTo(`COPY (SELECT g, 'v' || g FROM generate_series(1, ${c.ROWS_COPY}) g) TO STDOUT`)),
        new Writable({
          write(chunk, _enc, cb) {
            chunks.push(chunk)
            cb()
          },
        }),
      )
      let expected = ''
      for (let i = 1; i <= c.ROWS_COPY; i++) expected += `${i}\tv${i}\n`
      c.check(Buffer.concat(chunks).toString() === expected, 'copy out mismatch')
    }),

  large_result: () =>
    withClient(async (client) => {
      const r = await client.query({
        text: `SELECT g, md5(g::text) FROM generate_series(1, ${c.ROWS_LARGE}) g`,
        rowMode: 'array',
      })
      c.check(r.rows.length === c.ROWS_LARGE, `${r.rows.length} rows`)
      r.rows.forEach(([g, h], i) => {
        if (g !== i + 1 || h !== c.md5hex(String(i + 1))) throw new c.CheckFailed(`row ${i + 1} is ${g},${h}`)
      })
    }),

  large_bytea: () =>
    withClient(async (client) => {
      const data = c.byteaPayload()
      const r = await client.query({
        text: 'SELECT length(x), md5(x), x FROM (SELECT $1::bytea AS x) s',
        values: [data],
        rowMode: 'array',
      })
      const [n, h, back] = r.rows[0]
      c.check(n === data.length && h === c.md5hex(data), `server saw length ${n} md5 ${h}`)
      c.check(Buffer.isBuffer(back) && back.equals(data), 'bytes read back differ')
    }),

  listen_notify: async () => {
    const channel = c.unique('ch')
    const listener = await connect()
    const sender = await connect()
    try {
      const got = new Promise((resolve) => listener.on('notification', resolve))
      try {
        await listener.query(`LISTEN ${channel}`)
      } catch (e) {
        if (p.mode === 'transaction' && c.listenRefused(e)) throw new c.NotApplicable(c.LISTEN_TXN_NA + c.describe(e))
        throw e
      }
      await sender.query('SELECT pg_notify($1, $2)', [channel, 'payload-1'])
      const msg = await Promise.race([got, c.sleep(5000).then(() => null)])
      if (!msg && p.mode === 'transaction') throw new c.CheckFailed(c.LISTEN_TXN_SILENT)
      c.check(msg, 'no notification within 5s')
      c.check(msg.channel === channel && msg.payload === 'payload-1', `notification ${JSON.stringify(msg)}`)
      return 'notification received'
    } finally {
      await listener.end().catch(() => {})
      await sender.end().catch(() => {})
    }
  },

  cancel: async () => {
    const marker = c.unique('cancel')
    const client = await connect()
    const monitor = await connect()
    try {
      const query = new pg.Query(`SELECT pg_sleep(10) /* ${marker} */`)
      const done = new Promise((resolve) => {
        query.on('error', resolve)
        query.on('end', () => resolve(null))
      })
      client.query(query)
      await c.waitActivity((sql, v) => scalar(monitor, sql, v), marker, true)
      const t0 = Date.now()
      // pg's cancel API: a second Client object sends a CancelRequest for the target's query.
      new pg.Client(config()).cancel(client, query)
      const err = await Promise.race([done, c.sleep(5000).then(() => 'timeout')])
      c.check(err !== 'timeout', 'query still running 5s after cancel')
      c.check(err, 'pg_sleep finished without error')
      c.expectState(err, '57014')
      const took = (Date.now() - t0) / 1000
      c.check((await scalar(client, 'SELECT 7')) === 7, 'connection unusable after cancel')
      return `cancelled after ${took.toFixed(2)}s`
    } finally {
      await client.end().catch(() => {})
      await monitor.end().catch(() => {})
    }
  },

  statement_timeout: () =>
    withClient(async (client) => {
      const t0 = Date.now()
      await client.query('BEGIN')
      await client.query("SET LOCAL statement_timeout = '100ms'")
      await c.expectError(() => client.query('SELECT pg_sleep(5)'), '57014')
      await client.query('ROLLBACK')
      c.check(Date.now() - t0 < 3000, 'statement_timeout took too long')
      c.check((await scalar(client, 'SELECT 8')) === 8, 'connection unusable after timeout')
      const st = await scalar(client, 'SHOW statement_timeout')
      c.check(st === '0', `SET LOCAL leaked: statement_timeout=${st}`)
    }),

  batch: () =>
    withClient(
      async (client) => {
        const t = await table(client)
        try {
          const inserts = []
          for (let i = 0; i < c.BATCH_SIZE; i++) inserts.push(client.query(`INSERT INTO ${t} VALUES ($1, $2)`, [i, `p${i}`]))
          await Promise.all(inserts)
          const r = await client.query({ text: `SELECT count(*)::int, sum(k)::int FROM ${t}`, rowMode: 'array' })
          const want = [c.BATCH_SIZE, (c.BATCH_SIZE * (c.BATCH_SIZE - 1)) / 2]
          c.check(JSON.stringify(r.rows[0]) === JSON.stringify(want), `count/sum ${r.rows[0]}`)
          const results = await Promise.allSettled([
            client.query(`INSERT INTO ${t} VALUES (-1, 'a')`),
            client.query('SELECT $1::int / 0', [1]),
            client.query(`INSERT INTO ${t} VALUES (-3, 'c')`),
          ])
          c.check(results[1].status === 'rejected', 'failing statement in the pipeline succeeded')
          c.expectState(results[1].reason, '22012')
          c.check((await scalar(client, 'SELECT 9')) === 9, 'connection unusable after failed pipeline')
        } finally {
          await client.query(`DROP TABLE ${t}`)
        }
        return 'Client({pipeline: true})'
      },
      { pipeline: true },
    ),

  pool_churn: async () => {
    // maxUses: 1 makes pg.Pool close every connection after one query: open, query, close each time.
    const pool = new pg.Pool({ ...config(), max: 4, maxUses: 1 })
    pool.on('error', () => {})
    try {
      for (let i = 0; i < p.churn; i++) {
        const r = await pool.query({ text: 'SELECT $1::int', values: [i], rowMode: 'array' })
        c.check(r.rows[0][0] === i, `cycle ${i} got ${r.rows[0][0]}`)
      }
    } finally {
      await pool.end()
    }
    return `${p.churn} connections (pg.Pool maxUses=1)`
  },

  concurrent_clients: async () => {
    const t = await withClient((client) => table(client, 'cid int, i int, v text'))
    // One pg.Pool shared by all clients; each client checks out its own connection for its whole
    // run and destroys it after (release(true)), so a session-mode pooler gets its servers back.
    const pool = new pg.Pool({ ...config(), max: p.clients })
    pool.on('error', () => {})
    try {
      await c.runClients(p.clients, async (cid) => {
        const client = await pool.connect()
        try {
          for (let i = 0; i < c.TXNS_PER_CLIENT; i++) {
            await client.query('BEGIN')
            await client.query(`INSERT INTO ${t} VALUES ($1, $2, $3)`, [cid, i, `c${cid}-${i}`])
            const got = await scalar(client, 'SELECT $1::int * 1000 + $2::int', [cid, i])
            c.check(got === cid * 1000 + i, `client ${cid} got ${got} at ${i}`)
            await client.query('COMMIT')
          }
          const r = await client.query({ text: `SELECT i, v FROM ${t} WHERE cid = $1 ORDER BY i`, values: [cid], rowMode: 'array' })
          const want = Array.from({ length: c.TXNS_PER_CLIENT }, (_, i) => [i, `c${cid}-${i}`])
          c.check(JSON.stringify(r.rows) === JSON.stringify(want), `client ${cid} rows ${JSON.stringify(r.rows)}`)
        } finally {
          client.release(true)
        }
      })
    } finally {
      await pool.end()
      await withClient((client) => client.query(`DROP TABLE ${t}`))
    }
    return `${p.clients} clients on one pg.Pool`
  },
}

c.emitVersion(NAME, `pg ${require('pg/package.json').version}, pg-copy-streams ${require('pg-copy-streams/package.json').version}, node ${process.version}`)
c.runScenarios(NAME, p, scenarios)
