// Plumbing shared by the Node driver programs: connection parameters from the environment, the
// JSON-line result protocol, per-scenario time limits and the checks every driver repeats. The
// scenario list itself is tests/drivers/scenarios.py (read here so the two cannot drift apart).
'use strict'

const crypto = require('crypto')
const fs = require('fs')
const path = require('path')

function scenarioNames() {
  const src = fs.readFileSync(path.join(__dirname, '..', 'scenarios.py'), 'utf8')
  const block = src.slice(src.indexOf('SCENARIO_TABLE'), src.indexOf('\n]\n'))
  return [...block.matchAll(/^\s+\(?\s*"([a-z_0-9]+)",/gm)].map((m) => m[1])
}

const SCENARIOS = scenarioNames()
const ROWS_LARGE = 100000
const ROWS_COPY = 10000
const BYTEA_SIZE = 10 * 1024 * 1024
const BATCH_SIZE = 500
const TXNS_PER_CLIENT = 10
const PREPARED_REUSES = 20

function params() {
  const e = process.env
  return {
    host: e.DRV_HOST || '127.0.0.1',
    port: parseInt(e.DRV_PORT || '5432', 10),
    db: e.DRV_DB || 'app',
    user: e.DRV_USER || 'app_scram',
    password: e.DRV_PASSWORD || '',
    md5User: e.DRV_MD5_USER || 'app_md5',
    md5Password: e.DRV_MD5_PASSWORD || '',
    mode: e.DRV_MODE || 'direct',
    clients: parseInt(e.DRV_CLIENTS || '30', 10),
    churn: parseInt(e.DRV_CHURN || '1000', 10),
    timeout: parseFloat(e.DRV_TIMEOUT || '60'),
    only: new Set((e.DRV_ONLY || '').split(',').filter(Boolean)),
    ssl: e.DRV_SSL === 'require', // TLS without certificate checks (the matrix's -tls modes)
  }
}

class NotApplicable extends Error {}
class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what)
}

function describe(err) {
  if (!err) return String(err)
  const state = err.code && /^[0-9A-Z]{5}$/.test(err.code) ? ` [${err.code}]` : ''
  const msg = String(err.message || err).split('\n')[0]
  return `${err.constructor ? err.constructor.name : 'Error'}${state}: ${msg}`.slice(0, 500)
}

function expectState(err, ...states) {
  if (!err || !states.includes(err.code)) {
    throw new CheckFailed(`expected SQLSTATE ${states.join('/')}, got ${describe(err)}`)
  }
}

// Runs fn, which must fail with one of the SQLSTATEs; returns the error.
async function expectError(fn, ...states) {
  let err = null
  try {
    await fn()
  } catch (e) {
    err = e
  }
  if (!err) throw new CheckFailed(`expected SQLSTATE ${states.join('/')}, but the statement succeeded`)
  expectState(err, ...states)
  return err
}

function unique(prefix) {
  return `drv_${prefix}_${process.pid}_${crypto.randomInt(1 << 30)}`
}

let payload = null
function byteaPayload() {
  // Deterministic pseudo-random bytes (every byte value occurs), same size as the other languages.
  if (!payload) {
    payload = Buffer.alloc(BYTEA_SIZE)
    let x = 2463534242
    for (let i = 0; i < BYTEA_SIZE; i++) {
      x ^= x << 13
      x >>>= 0
      x ^= x >>> 17
      x ^= x << 5
      x >>>= 0
      payload[i] = x & 0xff
    }
  }
  return payload
}

function md5hex(data) {
  return crypto.createHash('md5').update(data).digest('hex')
}

function copyRows() {
  const rows = []
  for (let i = 0; i < ROWS_COPY; i++) rows.push([i, i % 1000 === 0 ? `row-${i}\ttab\\back` : `row-${i}`])
  return rows
}

function copyEscape(v) {
  return v.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n')
}

function emit(driver, scenario, status, detail) {
  process.stdout.write(JSON.stringify({ driver, scenario, status, detail }) + '\n')
}

function emitVersion(driver, version) {
  process.stdout.write(JSON.stringify({ driver, version }) + '\n')
}

function withTimeout(promise, seconds) {
  let timer
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${seconds}s`)), seconds * 1000)
  })
  return Promise.race([promise, t]).finally(() => clearTimeout(timer))
}

async function runScenarios(driver, p, table) {
  for (const name of SCENARIOS) {
    if (p.only.size && !p.only.has(name)) continue
    const fn = table[name]
    if (!fn) {
      emit(driver, name, 'fail', 'scenario not implemented by this program')
      continue
    }
    const start = Date.now()
    try {
      const result = await withTimeout(Promise.resolve().then(fn), p.timeout)
      const secs = ((Date.now() - start) / 1000).toFixed(2)
      emit(driver, name, 'pass', result ? `${result} (${secs}s)` : `ok (${secs}s)`)
    } catch (err) {
      if (err instanceof NotApplicable) emit(driver, name, 'na', err.message)
      else emit(driver, name, 'fail', describe(err))
    }
  }
  // A hung scenario may still hold sockets open: do not wait for them.
  process.exit(0)
}

async function runClients(n, fn) {
  const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => fn(i)))
  const failed = results.map((r, i) => [i, r]).filter(([, r]) => r.status === 'rejected')
  if (failed.length) {
    const [cid, r] = failed[0]
    throw new CheckFailed(`${failed.length}/${n} clients failed; client ${cid}: ${describe(r.reason)}`)
  }
}

// A pooler's refusal of LISTEN must say so: SQLSTATE 0A000 or a message naming LISTEN; any other
// error on LISTEN (say, a prepared-statement bug) is a plain failure.
function listenRefused(err) {
  return Boolean(err) && (err.code === '0A000' || /listen/i.test(String(err.message)))
}

const LISTEN_TXN_NA = 'impossible by design in transaction mode; the pooler refused LISTEN: '
const LISTEN_TXN_SILENT =
  'LISTEN was accepted silently in transaction mode and the notification was lost; ' +
  'the pooler must refuse LISTEN with a clear error'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Waits until the marked query is (running=true) or is no longer (running=false) active on the server.
async function waitActivity(queryFn, marker, running, seconds = 5) {
  const deadline = Date.now() + seconds * 1000
  for (;;) {
    const n = await queryFn(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
      [`%${marker} */`],
    )
    if ((n > 0) === running) return
    check(Date.now() < deadline, running ? 'pg_sleep never showed up in pg_stat_activity' : 'pg_sleep still running 5s after cancel')
    await sleep(20)
  }
}

module.exports = {
  SCENARIOS,
  ROWS_LARGE,
  ROWS_COPY,
  BYTEA_SIZE,
  BATCH_SIZE,
  TXNS_PER_CLIENT,
  PREPARED_REUSES,
  LISTEN_TXN_NA,
  LISTEN_TXN_SILENT,
  listenRefused,
  params,
  NotApplicable,
  CheckFailed,
  check,
  describe,
  expectState,
  expectError,
  unique,
  byteaPayload,
  md5hex,
  copyRows,
  copyEscape,
  emit,
  emitVersion,
  runScenarios,
  runClients,
  sleep,
  waitActivity,
}
