// postgres.js (`postgres`) driver program: the canonical scenarios with its automatic named prepared
// statements, sql.begin transactions and pipelining, COPY streams, listen/notify and query.cancel().
'use strict'

const postgres = require('postgres')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const c = require('./common')

const NAME = 'postgres.js'
const p = c.params()

function open(opts = {}) {
  return postgres({
    host: p.host,
    port: p.port,
    database: p.db,
    username: opts.user || p.user,
    password: opts.password !== undefined ? opts.password : p.password,
    max: opts.max || 1,
    connect_timeout: 10,
    ssl: p.ssl ? 'require' : false,
    onnotice: () => {},
    prepare: true,
  })
}

async function withSql(fn, opts) {
  const sql = open(opts)
  try {
    return await fn(sql)
  } finally {
    await sql.end({ timeout: 5 }).catch(() => {})
  }
}

async function table(sql, cols = 'k int, v text') {
  const name = c.unique('t')
  await sql.unsafe(`CREATE TABLE ${name} (${cols})`)
  return name
}

async function login(user, password) {
  await withSql(
    async (sql) => {
      const [row] = await sql`SELECT current_user AS u`
      c.check(row.u === user, `current_user is ${row.u}, expected ${user}`)
    },
    { user, password },
  )
  let err = null
  try {
    await withSql((sql) => sql`SELECT 1`, { user, password: password + '-wrong' })
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
    withSql(async (sql) => {
      const res = await sql`SELECT 1 AS a; SELECT 'x' || 'y' AS b`.simple()
      c.check(res.length === 2 && res[0][0].a === 1 && res[1][0].b === 'xy', `results ${JSON.stringify(res)}`)
    }),

  param_query: () =>
    withSql(async (sql) => {
      const bin = Buffer.from([0, 1, 255, 39])
      const s = 'héllo \'quoted\' \\ "'
      const [row] = await sql`
        SELECT ${42}::int AS a, ${s}::text AS b, ${null}::text AS c, ${true}::bool AS d,
               ${'12.345'}::numeric AS e, ${bin}::bytea AS f`
      c.check(
        row.a === 42 && row.b === s && row.c === null && row.d === true && row.e === '12.345' && bin.equals(row.f),
        `round trip ${JSON.stringify(row)}`,
      )
    }),

  prepared_reuse: async () => {
    await c.runClients(p.clients, (cid) =>
      withSql(async (sql) => {
        for (let j = 0; j < c.PREPARED_REUSES; j++) {
          const [row] = await sql.begin((tx) => tx`SELECT ${cid}::int * 2 + ${j}::int AS a, ${'c' + cid}::text AS b`)
          c.check(row.a === cid * 2 + j && row.b === `c${cid}`, `client ${cid} got ${JSON.stringify(row)} at ${j}`)
        }
      }),
    )
    return `${p.clients} clients x ${c.PREPARED_REUSES} transactions, automatic prepared statements`
  },

  transaction: () =>
    withSql(
      async (sql) => {
        const t = await table(sql)
        try {
          await sql.begin((tx) => tx`INSERT INTO ${sql(t)} VALUES (1, 'committed')`)
          const err = await sql
            .begin(async (tx) => {
              await tx`INSERT INTO ${sql(t)} VALUES (2, 'rolled back')`
              throw new Error('rollback me')
            })
            .catch((e) => e)
          c.check(err && err.message === 'rollback me', 'transaction callback error lost')
          const rows = await sql`SELECT k FROM ${sql(t)} ORDER BY k`
          c.check(JSON.stringify(rows.map((r) => r.k)) === '[1]', `visible rows ${JSON.stringify(rows)}`)
        } finally {
          await sql.unsafe(`DROP TABLE ${t}`)
        }
      },
      { max: 2 },
    ),

  error_recovery: () =>
    withSql(async (sql) => {
      const t = await table(sql)
      try {
        await c.expectError(() => sql`SELECT 1/0`.simple(), '22012')
        await c.expectError(() => sql`SELECT ${1}::int / 0`, '22012')
        const [r2] = await sql`SELECT 2 AS v`
        c.check(r2.v === 2, 'query after error')
        let inner = null
        const err = await sql
          .begin(async (tx) => {
            await tx`INSERT INTO ${sql(t)} VALUES (1, 'x')`
            await c.expectError(() => tx`SELECT ${1}::int / 0`, '22012')
            inner = await c.expectError(() => tx`SELECT 1`, '25P02')
            throw new Error('done')
          })
          .catch((e) => e)
        c.check(inner && err.message === 'done', `transaction outcome ${c.describe(err)}`)
        const [r3] = await sql`SELECT 3 AS v`
        c.check(r3.v === 3, 'query after rollback')
        const [n] = await sql`SELECT count(*)::int AS n FROM ${sql(t)}`
        c.check(n.n === 0, `rolled-back insert visible (${n.n} rows)`)
      } finally {
        await sql.unsafe(`DROP TABLE ${t}`)
      }
    }),

  copy_in: () =>
    withSql(async (sql) => {
      const rows = c.copyRows()
      const t = await table(sql)
      try {
        const lines = rows.map(([k, v]) => `${k}\t${c.copyEscape(v)}\n`)
        const writable = await sql`COPY ${sql(t)} (k, v) FROM STDIN`.writable()
        await pipeline(Readable.from(lines), writable)
        const [r] = await sql`SELECT count(*)::int AS n, sum(k)::int AS s FROM ${sql(t)}`
        c.check(r.n === c.ROWS_COPY && r.s === (c.ROWS_COPY * (c.ROWS_COPY - 1)) / 2, `count/sum ${JSON.stringify(r)}`)
        const [v] = await sql`SELECT v FROM ${sql(t)} WHERE k = 1000`
        c.check(v.v === rows[1000][1], `escaped value ${v.v}`)
      } finally {
        await sql.unsafe(`DROP TABLE ${t}`)
      }
    }),

  copy_out: () =>
    withSql(async (sql) => {
      const chunks = []
      const readable = await sql`COPY (SELECT g, 'v' || g FROM generate_series(1, ${sql.unsafe(String(c.ROWS_COPY))}) g) TO STDOUT`.readable()
      await pipeline(
        readable,
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
    withSql(async (sql) => {
      const rows = await sql`SELECT g, md5(g::text) AS h FROM generate_series(1, ${c.ROWS_LARGE}::int) g`
      c.check(rows.length === c.ROWS_LARGE, `${rows.length} rows`)
      rows.forEach((r, i) => {
        if (r.g !== i + 1 || r.h !== c.md5hex(String(i + 1))) throw new c.CheckFailed(`row ${i + 1} is ${JSON.stringify(r)}`)
      })
    }),

  large_bytea: () =>
    withSql(async (sql) => {
      const data = c.byteaPayload()
      const [r] = await sql`SELECT length(x) AS n, md5(x) AS h, x FROM (SELECT ${data}::bytea AS x) s`
      c.check(r.n === data.length && r.h === c.md5hex(data), `server saw length ${r.n} md5 ${r.h}`)
      c.check(Buffer.isBuffer(r.x) && r.x.equals(data), 'bytes read back differ')
    }),

  listen_notify: () =>
    withSql(
      async (sql) => {
        const channel = c.unique('ch')
        let resolve
        const got = new Promise((r) => (resolve = r))
        try {
          // sql.listen opens its own dedicated connection and retries it; give up after 5s.
          await Promise.race([
            sql.listen(channel, (payload) => resolve(payload)),
            c.sleep(5000).then(() => {
              throw new c.CheckFailed('LISTEN did not complete within 5s')
            }),
          ])
        } catch (e) {
          if (p.mode === 'transaction' && !(e instanceof c.CheckFailed) && c.listenRefused(e)) {
            throw new c.NotApplicable(c.LISTEN_TXN_NA + c.describe(e))
          }
          throw e
        }
        await sql.notify(channel, 'payload-1')
        const payload = await Promise.race([got, c.sleep(5000).then(() => null)])
        if (payload === null && p.mode === 'transaction') throw new c.CheckFailed(c.LISTEN_TXN_SILENT)
        c.check(payload === 'payload-1', `notification payload ${payload}`)
        return 'notification received'
      },
      { max: 2 },
    ),

  cancel: async () => {
    const marker = c.unique('cancel')
    const sql = open()
    const monitor = open()
    try {
      const query = sql.unsafe(`SELECT pg_sleep(10) /* ${marker} */`)
      const done = query.then(
        () => null,
        (e) => e,
      )
      await c.waitActivity(async (q, v) => (await monitor.unsafe(q, v))[0].n, marker, true)
      const t0 = Date.now()
      query.cancel()
      const err = await Promise.race([done, c.sleep(5000).then(() => 'timeout')])
      c.check(err !== 'timeout', 'query still running 5s after cancel')
      c.check(err, 'pg_sleep finished without error')
      c.expectState(err, '57014')
      const took = (Date.now() - t0) / 1000
      const [r] = await sql`SELECT 7 AS v`
      c.check(r.v === 7, 'connection unusable after cancel')
      return `cancelled after ${took.toFixed(2)}s`
    } finally {
      await sql.end({ timeout: 5 }).catch(() => {})
      await monitor.end({ timeout: 5 }).catch(() => {})
    }
  },

  statement_timeout: () =>
    withSql(async (sql) => {
      const t0 = Date.now()
      const err = await sql
        .begin(async (tx) => {
          await tx`SET LOCAL statement_timeout = '100ms'`
          await tx`SELECT pg_sleep(5)`
        })
        .catch((e) => e)
      c.expectState(err, '57014')
      c.check(Date.now() - t0 < 3000, 'statement_timeout took too long')
      const [r] = await sql`SELECT 8 AS v`
      c.check(r.v === 8, 'connection unusable after timeout')
      const [st] = await sql`SHOW statement_timeout`
      c.check(st.statement_timeout === '0', `SET LOCAL leaked: ${JSON.stringify(st)}`)
    }),

  batch: () =>
    withSql(async (sql) => {
      const t = await table(sql)
      try {
        // Returning an array of queries from sql.begin pipelines them in one transaction.
        await sql.begin((tx) => Array.from({ length: c.BATCH_SIZE }, (_, i) => tx`INSERT INTO ${sql(t)} VALUES (${i}, ${'p' + i})`))
        const [r] = await sql`SELECT count(*)::int AS n, sum(k)::int AS s FROM ${sql(t)}`
        c.check(r.n === c.BATCH_SIZE && r.s === (c.BATCH_SIZE * (c.BATCH_SIZE - 1)) / 2, `count/sum ${JSON.stringify(r)}`)
        const err = await sql
          .begin((tx) => [
            tx`INSERT INTO ${sql(t)} VALUES (-1, 'a')`,
            tx`SELECT ${1}::int / 0`,
            tx`INSERT INTO ${sql(t)} VALUES (-3, 'c')`,
          ])
          .catch((e) => e)
        c.expectState(err, '22012')
        const [n] = await sql`SELECT count(*)::int AS n FROM ${sql(t)} WHERE k < 0`
        c.check(n.n === 0, `failed pipelined transaction left ${n.n} rows`)
      } finally {
        await sql.unsafe(`DROP TABLE ${t}`)
      }
      return 'pipelined sql.begin'
    }),

  pool_churn: async () => {
    for (let i = 0; i < p.churn; i++) {
      const sql = open()
      try {
        const [r] = await sql`SELECT ${i}::int AS v`
        c.check(r.v === i, `cycle ${i} got ${r.v}`)
      } finally {
        await sql.end({ timeout: 5 })
      }
    }
    return `${p.churn} connections`
  },

  concurrent_clients: async () => {
    const t = await withSql((sql) => table(sql, 'cid int, i int, v text'))
    try {
      await c.runClients(p.clients, (cid) =>
        withSql(async (sql) => {
          for (let i = 0; i < c.TXNS_PER_CLIENT; i++) {
            await sql.begin(async (tx) => {
              await tx`INSERT INTO ${sql(t)} VALUES (${cid}, ${i}, ${`c${cid}-${i}`})`
              const [r] = await tx`SELECT ${cid}::int * 1000 + ${i}::int AS v`
              c.check(r.v === cid * 1000 + i, `client ${cid} got ${r.v} at ${i}`)
            })
          }
          const rows = await sql`SELECT i, v FROM ${sql(t)} WHERE cid = ${cid} ORDER BY i`
          const want = Array.from({ length: c.TXNS_PER_CLIENT }, (_, i) => ({ i, v: `c${cid}-${i}` }))
          c.check(JSON.stringify(rows.map((r) => ({ i: r.i, v: r.v }))) === JSON.stringify(want), `client ${cid} rows`)
        }),
      )
    } finally {
      await withSql((sql) => sql.unsafe(`DROP TABLE ${t}`))
    }
    return `${p.clients} clients`
  },
}

c.emitVersion(NAME, `postgres ${JSON.parse(require('fs').readFileSync(require('path').join(__dirname, 'node_modules/postgres/package.json'))).version}, node ${process.version}`)
c.runScenarios(NAME, p, scenarios)
