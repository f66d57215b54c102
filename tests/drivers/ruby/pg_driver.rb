# ruby-pg driver program (Debian's ruby-pg): the canonical scenarios with exec/exec_params, named
# prepare/exec_prepared, copy_data, conn.cancel, wait_for_notify and libpq pipeline mode.
# One JSON line per scenario.
require 'digest'
require 'json'
require 'pg'

NAME = 'ruby-pg'.freeze
ROWS_LARGE = 100_000
ROWS_COPY = 10_000
BYTEA_SIZE = 10 * 1024 * 1024
BATCH_SIZE = 500
TXNS_PER_CLIENT = 10
PREPARED_REUSES = 20
LISTEN_TXN_NA = 'impossible by design in transaction mode; the pooler refused LISTEN: '.freeze
LISTEN_TXN_SILENT = 'LISTEN was accepted silently in transaction mode and the notification was lost; ' \
                    'the pooler must refuse LISTEN with a clear error'.freeze

E = ENV
P = {
  host: E.fetch('DRV_HOST', '127.0.0.1'), port: E.fetch('DRV_PORT', '5432').to_i, db: E.fetch('DRV_DB', 'app'),
  user: E.fetch('DRV_USER', 'app_scram'), password: E.fetch('DRV_PASSWORD', ''),
  md5_user: E.fetch('DRV_MD5_USER', 'app_md5'), md5_password: E.fetch('DRV_MD5_PASSWORD', ''),
  mode: E.fetch('DRV_MODE', 'direct'), clients: E.fetch('DRV_CLIENTS', '30').to_i,
  churn: E.fetch('DRV_CHURN', '1000').to_i, timeout: E.fetch('DRV_TIMEOUT', '60').to_f,
  only: E.fetch('DRV_ONLY', '').split(',').reject(&:empty?),
  # DRV_SSL=require (the matrix's -tls modes): TLS without certificate checks; otherwise libpq's default.
  sslmode: E.fetch('DRV_SSL', '') == 'require' ? 'require' : 'prefer'
}.freeze

class NotApplicable < StandardError; end
class CheckFailed < StandardError; end

def check(cond, what)
  raise CheckFailed, what unless cond
end

def sqlstate(err)
  err.respond_to?(:result) && err.result ? err.result.error_field(PG::PG_DIAG_SQLSTATE) : nil
end

def describe(err)
  state = err.is_a?(PG::Error) ? sqlstate(err) : nil
  msg = err.message.to_s.lines.first.to_s.strip
  "#{err.class.name}#{state ? " [#{state}]" : ''}: #{msg}"[0, 500]
end

def expect_error(*states)
  yield
  raise CheckFailed, "expected SQLSTATE #{states.join('/')}, but the statement succeeded"
rescue PG::Error => e
  raise CheckFailed, "expected SQLSTATE #{states.join('/')}, got #{describe(e)}" unless states.include?(sqlstate(e))

  e
end

# A pooler's refusal of LISTEN must say so: SQLSTATE 0A000 or a message naming LISTEN.
def listen_refused(err)
  sqlstate(err) == '0A000' || err.message =~ /listen/i
end

def connect(user = P[:user], password = P[:password])
  # Over TLS the SCRAM role's logins must bind to the channel (SCRAM-SHA-256-PLUS); the md5 role cannot.
  binding = P[:sslmode] == 'require' && user == P[:user] ? 'require' : 'prefer'
  PG.connect(host: P[:host], port: P[:port], dbname: P[:db], user: user, password: password, connect_timeout: 10,
             sslmode: P[:sslmode], channel_binding: binding)
end

def with_conn
  conn = connect
  yield conn
ensure
  conn&.close
end

def unique(prefix)
  "drv_#{prefix}_#{Process.pid}_#{rand(1 << 30)}"
end

def table(conn, cols = 'k int, v text')
  name = unique('t')
  conn.exec("CREATE TABLE #{name} (#{cols})")
  name
end

def scalar(conn, sql, params = [])
  conn.exec_params(sql, params).getvalue(0, 0)
end

def payload
  # Deterministic pseudo-random bytes (every byte value occurs).
  @payload ||= Random.new(20_240_601).bytes(BYTEA_SIZE)
end

def copy_rows
  (0...ROWS_COPY).map { |i| [i, i % 1000 == 0 ? "row-#{i}\ttab\\back" : "row-#{i}"] }
end

def run_clients(n)
  errors = Queue.new
  threads = (0...n).map do |cid|
    Thread.new do
      yield cid
    rescue StandardError => e
      errors << [cid, e]
    end
  end
  threads.each(&:join)
  return if errors.empty?

  count = errors.size
  cid, first = errors.pop
  raise CheckFailed, "#{count}/#{n} clients failed; client #{cid}: #{describe(first)}"
end

def login(user, password)
  conn = connect(user, password)
  got = conn.exec('SELECT current_user').getvalue(0, 0)
  conn.close
  check(got == user, "current_user is #{got}, expected #{user}")
  begin
    connect(user, "#{password}-wrong").close
  rescue PG::Error => e
    check(e.message =~ /password|auth/i, "unexpected login error: #{describe(e)}")
    return 'wrong password refused'
  end
  raise CheckFailed, 'login with a wrong password succeeded'
end

SCENARIO_IMPLS = {
  'login_scram' => -> { login(P[:user], P[:password]) },
  'login_md5' => -> { login(P[:md5_user], P[:md5_password]) },

  'simple_query' => lambda {
    with_conn do |c|
      # exec sends one simple Query; send_query + get_result shows every result set.
      c.send_query("SELECT 1 AS a; SELECT 'x' || 'y' AS b")
      results = []
      while (r = c.get_result)
        r.check
        results << r.values
      end
      check(results == [[['1']], [['xy']]], "results #{results.inspect}")
    end
    nil
  },

  'param_query' => lambda {
    with_conn do |c|
      s = "héllo 'quoted' \\ \""
      bin = "\x00\x01\xff'".b
      r = c.exec_params('SELECT $1::int, $2::text, $3::text, $4::bool, $5::numeric, $6::bytea',
                        [42, s, nil, 't', '12.345', { value: bin, format: 1 }])
      row = r.values[0]
      check(row[0] == '42' && row[1] == s && row[2].nil? && row[3] == 't' && row[4] == '12.345' &&
            PG::Connection.unescape_bytea(row[5]) == bin, "round trip #{row.inspect}")
    end
    nil
  },

  'prepared_reuse' => lambda {
    run_clients(P[:clients]) do |cid|
      with_conn do |c|
        c.prepare('reuse', 'SELECT $1::int * 2 + $2::int, $3::text')
        PREPARED_REUSES.times do |j|
          c.transaction do
            row = c.exec_prepared('reuse', [cid, j, "c#{cid}"]).values[0]
            check(row == [(cid * 2 + j).to_s, "c#{cid}"], "client #{cid} got #{row.inspect} at #{j}")
          end
        end
      end
    end
    "#{P[:clients]} clients x #{PREPARED_REUSES} transactions, prepare/exec_prepared"
  },

  'transaction' => lambda {
    with_conn do |c|
      other = connect
      t = table(c)
      begin
        c.transaction { c.exec("INSERT INTO #{t} VALUES (1, 'committed')") }
        begin
          c.transaction do
            c.exec("INSERT INTO #{t} VALUES (2, 'rolled back')")
            raise KeyError, 'rollback me'
          end
        rescue KeyError
          nil
        end
        ks = other.exec("SELECT k FROM #{t} ORDER BY k").column_values(0)
        check(ks == ['1'], "visible rows #{ks.inspect}, expected [1]")
      ensure
        c.exec("DROP TABLE #{t}")
        other.close
      end
    end
    nil
  },

  'error_recovery' => lambda {
    with_conn do |c|
      t = table(c)
      begin
        expect_error('22012') { c.exec('SELECT 1/0') }
        expect_error('22012') { c.exec_params('SELECT $1::int / 0', [1]) }
        check(scalar(c, 'SELECT 2') == '2', 'query after error')
        c.exec('BEGIN')
        c.exec("INSERT INTO #{t} VALUES (1, 'x')")
        expect_error('22012') { c.exec_params('SELECT $1::int / 0', [1]) }
        expect_error('25P02') { c.exec('SELECT 1') }
        c.exec('ROLLBACK')
        check(scalar(c, 'SELECT 3') == '3', 'query after rollback')
        n = scalar(c, "SELECT count(*) FROM #{t}")
        check(n == '0', "rolled-back insert visible (#{n} rows)")
      ensure
        c.exec("DROP TABLE #{t}")
      end
    end
    nil
  },

  'copy_in' => lambda {
    rows = copy_rows
    with_conn do |c|
      t = table(c)
      begin
        enc = PG::TextEncoder::CopyRow.new
        c.copy_data("COPY #{t} (k, v) FROM STDIN", enc) { rows.each { |r| c.put_copy_data(r) } }
        got = c.exec("SELECT count(*), sum(k) FROM #{t}").values[0]
        check(got == [ROWS_COPY.to_s, (ROWS_COPY * (ROWS_COPY - 1) / 2).to_s], "count/sum #{got.inspect}")
        v = scalar(c, "SELECT v FROM #{t} WHERE k = 1000")
        check(v == rows[1000][1], "escaped value #{v.inspect}")
      ensure
        c.exec("DROP TABLE #{t}")
      end
    end
    'copy_data with PG::TextEncoder::CopyRow'
  },

  'copy_out' => lambda {
    out = +''
    with_conn do |c|
      c.copy_data("COPY (SELECT g, 'v' || g FROM generate_series(1, #{ROWS_COPY}) g) TO STDOUT") do
        while (chunk = c.get_copy_data)
          out << chunk
        end
      end
    end
    want = (1..ROWS_COPY).map { |i| "#{i}\tv#{i}\n" }.join
    check(out == want, "copy out mismatch (#{out.lines.size} lines)")
    nil
  },

  'large_result' => lambda {
    with_conn do |c|
      rows = c.exec("SELECT g, md5(g::text) FROM generate_series(1, #{ROWS_LARGE}) g").values
      check(rows.size == ROWS_LARGE, "#{rows.size} rows")
      rows.each_with_index do |(g, h), i|
        raise CheckFailed, "row #{i + 1} is #{g} #{h}" unless g == (i + 1).to_s && h == Digest::MD5.hexdigest((i + 1).to_s)
      end
    end
    nil
  },

  'large_bytea' => lambda {
    data = payload
    with_conn do |c|
      # Binary parameter in, binary result out (result format 1): no hex escaping either way.
      r = c.exec_params('SELECT length(x), md5(x), x FROM (SELECT $1::bytea AS x) s', [{ value: data, format: 1 }], 1)
      n = r.getvalue(0, 0).unpack1('N')
      h = r.getvalue(0, 1)
      back = r.getvalue(0, 2)
      check(n == data.bytesize && h == Digest::MD5.hexdigest(data), "server saw length #{n} md5 #{h}")
      check(back == data, 'bytes read back differ')
    end
    'binary parameter and result format'
  },

  'listen_notify' => lambda {
    channel = unique('ch')
    listener = connect
    sender = connect
    begin
      begin
        listener.exec("LISTEN #{channel}")
      rescue PG::Error => e
        raise NotApplicable, LISTEN_TXN_NA + describe(e) if P[:mode] == 'transaction' && listen_refused(e)

        raise
      end
      sender.exec_params('SELECT pg_notify($1, $2)', [channel, 'payload-1'])
      got = nil
      listener.wait_for_notify(5) { |ch, _pid, payload| got = [ch, payload] }
      raise CheckFailed, LISTEN_TXN_SILENT if got.nil? && P[:mode] == 'transaction'

      check(got == [channel, 'payload-1'], "notification #{got.inspect}")
    ensure
      listener.close
      sender.close
    end
    'notification received'
  },

  'cancel' => lambda {
    marker = unique('cancel')
    c = connect
    monitor = connect
    begin
      err = nil
      th = Thread.new do
        c.exec("SELECT pg_sleep(10) /* #{marker} */")
      rescue PG::Error => e
        err = e
      end
      probe = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1"
      deadline = Time.now + 5
      while scalar(monitor, probe, ["%#{marker} */"]) == '0'
        check(Time.now < deadline, 'pg_sleep never showed up in pg_stat_activity')
        sleep 0.02
      end
      t0 = Time.now
      res = c.cancel
      check(res.nil?, "cancel returned #{res.inspect}")
      check(th.join(5), 'query still running 5s after cancel')
      check(err && sqlstate(err) == '57014', "expected 57014, got #{err ? describe(err) : 'success'}")
      took = Time.now - t0
      check(scalar(c, 'SELECT 7') == '7', 'connection unusable after cancel')
      format('cancelled after %.2fs (PG::Connection#cancel)', took)
    ensure
      c.close
      monitor.close
    end
  },

  'statement_timeout' => lambda {
    with_conn do |c|
      t0 = Time.now
      c.exec('BEGIN')
      c.exec("SET LOCAL statement_timeout = '100ms'")
      expect_error('57014') { c.exec('SELECT pg_sleep(5)') }
      c.exec('ROLLBACK')
      check(Time.now - t0 < 3, 'statement_timeout took too long')
      check(scalar(c, 'SELECT 8') == '8', 'connection unusable after timeout')
      st = scalar(c, 'SHOW statement_timeout')
      check(st == '0', "SET LOCAL leaked: statement_timeout=#{st}")
    end
    nil
  },

  'batch' => lambda {
    with_conn do |c|
      t = table(c)
      begin
        c.enter_pipeline_mode
        BATCH_SIZE.times { |i| c.send_query_params("INSERT INTO #{t} VALUES ($1, $2)", [i, "p#{i}"]) }
        c.pipeline_sync
        BATCH_SIZE.times do
          c.get_result.check
          check(c.get_result.nil?, 'expected end of result')
        end
        check(c.get_result.result_status == PG::PGRES_PIPELINE_SYNC, 'expected pipeline sync')
        c.exit_pipeline_mode
        got = c.exec("SELECT count(*), sum(k) FROM #{t}").values[0]
        check(got == [BATCH_SIZE.to_s, (BATCH_SIZE * (BATCH_SIZE - 1) / 2).to_s], "count/sum #{got.inspect}")
        c.enter_pipeline_mode
        c.send_query_params("INSERT INTO #{t} VALUES (-1, 'a')", [])
        c.send_query_params('SELECT $1::int / 0', [1])
        c.send_query_params("INSERT INTO #{t} VALUES (-3, 'c')", [])
        c.pipeline_sync
        statuses = []
        states = []
        loop do
          r = c.get_result
          next if r.nil?

          statuses << r.result_status
          states << r.error_field(PG::PG_DIAG_SQLSTATE)
          break if r.result_status == PG::PGRES_PIPELINE_SYNC
        end
        c.exit_pipeline_mode
        check(states.include?('22012'), "no 22012 in the failed pipeline: #{states.inspect}")
        check(statuses.include?(PG::PGRES_PIPELINE_ABORTED), 'statement after the error was not aborted')
        check(scalar(c, 'SELECT 9') == '9', 'connection unusable after failed pipeline')
        n = scalar(c, "SELECT count(*) FROM #{t} WHERE k < 0")
        check(n == '0', "failed pipeline (one implicit transaction) left #{n} rows")
      ensure
        c.exit_pipeline_mode rescue nil # rubocop:disable Style/RescueModifier
        c.exec("DROP TABLE #{t}")
      end
    end
    'libpq pipeline mode'
  },

  'pool_churn' => lambda {
    P[:churn].times do |i|
      c = connect
      begin
        got = scalar(c, 'SELECT $1::int', [i])
        check(got == i.to_s, "cycle #{i} got #{got}")
      ensure
        c.close
      end
    end
    "#{P[:churn]} connections"
  },

  'concurrent_clients' => lambda {
    t = nil
    with_conn { |c| t = table(c, 'cid int, i int, v text') }
    begin
      run_clients(P[:clients]) do |cid|
        with_conn do |c|
          TXNS_PER_CLIENT.times do |i|
            c.transaction do
              c.exec_params("INSERT INTO #{t} VALUES ($1, $2, $3)", [cid, i, "c#{cid}-#{i}"])
              got = scalar(c, 'SELECT $1::int * 1000 + $2::int', [cid, i])
              check(got == (cid * 1000 + i).to_s, "client #{cid} got #{got} at #{i}")
            end
          end
          rows = c.exec_params("SELECT i, v FROM #{t} WHERE cid = $1 ORDER BY i", [cid]).values
          want = (0...TXNS_PER_CLIENT).map { |i| [i.to_s, "c#{cid}-#{i}"] }
          check(rows == want, "client #{cid} rows #{rows.inspect}")
        end
      end
    ensure
      with_conn { |c| c.exec("DROP TABLE #{t}") }
    end
    "#{P[:clients]} clients"
  }
}.freeze

def scenario_names
  path = E.fetch('DRV_SCENARIOS_FILE', File.join(__dir__, '..', 'scenarios.py'))
  src = File.read(path)
  block = src[src.index('SCENARIO_TABLE')...src.index("\n]\n")]
  block.scan(/^\s+\(?\s*"([a-z_0-9]+)",/).flatten
end

def emit(scenario, status, detail)
  $stdout.puts(JSON.generate({ driver: NAME, scenario: scenario, status: status, detail: detail }))
  $stdout.flush
end

$stdout.puts(JSON.generate({ driver: NAME, version: "ruby-pg #{PG::VERSION}, libpq #{PG.library_version}, ruby #{RUBY_VERSION}" }))
scenario_names.each do |name|
  next if !P[:only].empty? && !P[:only].include?(name)

  fn = SCENARIO_IMPLS[name]
  unless fn
    emit(name, 'fail', 'scenario not implemented by this program')
    next
  end
  t0 = Time.now
  outcome = nil
  th = Thread.new do
    outcome = [:pass, fn.call]
  rescue NotApplicable => e
    outcome = [:na, e.message]
  rescue StandardError, ScriptError => e
    outcome = [:fail, describe(e)]
  end
  if th.join(P[:timeout]).nil?
    emit(name, 'fail', format('timed out after %.0fs', P[:timeout]))
    next
  end
  status, detail = outcome
  if status == :pass
    emit(name, 'pass', format('%<d>s (%<s>.2fs)', d: detail || 'ok', s: Time.now - t0))
  else
    emit(name, status.to_s, detail.to_s)
  end
end
$stdout.flush
exit!(0)
