<?php
// PHP PDO_pgsql driver program (Debian's php-pgsql): the canonical scenarios with PDO prepared
// statements (server-side, named pdo_stmt_*), transactions, pgsqlCopyFromArray/ToArray and
// pgsqlGetNotify; concurrent clients are forked processes. One JSON line per scenario.

declare(strict_types=1);

const ROWS_LARGE = 100000;
const ROWS_COPY = 10000;
const BYTEA_SIZE = 10 * 1024 * 1024;
const TXNS_PER_CLIENT = 10;
const PREPARED_REUSES = 20;
const LISTEN_TXN_NA = 'impossible by design in transaction mode; the pooler refused LISTEN: ';
const LISTEN_TXN_SILENT = 'LISTEN was accepted silently in transaction mode and the notification was lost; '
    . 'the pooler must refuse LISTEN with a clear error';
const NAME = 'php-pdo';

function envv(string $k, string $d): string
{
    $v = getenv($k);
    return $v === false ? $d : $v;
}

$P = [
    'host' => envv('DRV_HOST', '127.0.0.1'), 'port' => (int) envv('DRV_PORT', '5432'), 'db' => envv('DRV_DB', 'app'),
    'user' => envv('DRV_USER', 'app_scram'), 'password' => envv('DRV_PASSWORD', ''),
    'md5_user' => envv('DRV_MD5_USER', 'app_md5'), 'md5_password' => envv('DRV_MD5_PASSWORD', ''),
    'mode' => envv('DRV_MODE', 'direct'), 'clients' => (int) envv('DRV_CLIENTS', '30'),
    'churn' => (int) envv('DRV_CHURN', '1000'),
    'only' => array_values(array_filter(explode(',', envv('DRV_ONLY', '')))),
    // DRV_SSL=require (the matrix's -tls modes): TLS without certificate checks; otherwise libpq's default.
    'sslmode' => envv('DRV_SSL', '') === 'require' ? 'require' : 'prefer',
];

class NotApplicable extends Exception {}
class CheckFailed extends Exception {}

function check($cond, string $what): void
{
    if (!$cond) {
        throw new CheckFailed($what);
    }
}

function describe(Throwable $e): string
{
    $state = $e instanceof PDOException && $e->errorInfo ? ' [' . $e->errorInfo[0] . ']' : '';
    $msg = strtok((string) $e->getMessage(), "\n");
    return substr(get_class($e) . $state . ': ' . $msg, 0, 500);
}

function expect_state(callable $fn, string ...$states): void
{
    try {
        $fn();
    } catch (PDOException $e) {
        $got = $e->errorInfo[0] ?? (string) $e->getCode();
        if (!in_array($got, $states, true)) {
            throw new CheckFailed('expected SQLSTATE ' . implode('/', $states) . ', got ' . describe($e));
        }
        return;
    }
    throw new CheckFailed('expected SQLSTATE ' . implode('/', $states) . ', but the statement succeeded');
}

function connect(?string $user = null, ?string $password = null): PDO
{
    global $P;
    // Over TLS the SCRAM role's logins must bind to the channel (SCRAM-SHA-256-PLUS); the md5 role cannot.
    $binding = $P['sslmode'] === 'require' && ($user ?? $P['user']) === $P['user'] ? 'require' : 'prefer';
    $dsn = "pgsql:host={$P['host']};port={$P['port']};dbname={$P['db']};connect_timeout=10;sslmode={$P['sslmode']}"
        . ";channel_binding=$binding";
    return new PDO($dsn, $user ?? $P['user'], $password ?? $P['password'], [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_EMULATE_PREPARES => false,
    ]);
}

function scalar(PDO $c, string $sql, array $params = [])
{
    $st = $c->prepare($sql);
    $st->execute($params);
    return $st->fetchColumn();
}

function unique(string $prefix): string
{
    return 'drv_' . $prefix . '_' . getmypid() . '_' . random_int(0, 1 << 30);
}

function table(PDO $c, string $cols = 'k int, v text'): string
{
    $t = unique('t');
    $c->exec("CREATE TABLE $t ($cols)");
    return $t;
}

function payload(): string
{
    // Deterministic pseudo-random bytes (every byte value occurs).
    mt_srand(20240601);
    $out = '';
    for ($i = 0; $i < BYTEA_SIZE; $i += 4) {
        $out .= pack('N', mt_rand(0, 0x7fffffff) * 2 + mt_rand(0, 1));
    }
    return substr($out, 0, BYTEA_SIZE);
}

// PHP has no threads: each concurrent client is a forked process reporting through its exit code and
// a temp file; the parent checks them all.
function run_clients(int $n, callable $fn): void
{
    $dir = sys_get_temp_dir() . '/' . unique('clients');
    mkdir($dir);
    $pids = [];
    for ($cid = 0; $cid < $n; $cid++) {
        $pid = pcntl_fork();
        if ($pid === 0) {
            $code = 0;
            try {
                $fn($cid);
            } catch (Throwable $e) {
                file_put_contents("$dir/$cid", describe($e));
                $code = 1;
            }
            exit($code);
        }
        check($pid > 0, 'fork failed');
        $pids[$cid] = $pid;
    }
    $failed = [];
    foreach ($pids as $cid => $pid) {
        pcntl_waitpid($pid, $status);
        $err = @file_get_contents("$dir/$cid");
        if ($err !== false) {
            $failed[] = "client $cid: $err";
            unlink("$dir/$cid");
        } elseif (!pcntl_wifexited($status) || pcntl_wexitstatus($status) !== 0) {
            $failed[] = "client $cid: process ended with status $status";
        }
    }
    rmdir($dir);
    if ($failed) {
        throw new CheckFailed(count($failed) . "/$n clients failed; " . $failed[0]);
    }
}

function login(string $user, string $password): string
{
    $c = connect($user, $password);
    $got = $c->query('SELECT current_user')->fetchColumn();
    $c = null;
    check($got === $user, "current_user is $got, expected $user");
    try {
        connect($user, $password . '-wrong');
    } catch (PDOException $e) {
        check(preg_match('/password|auth/i', $e->getMessage()) === 1, 'unexpected login error: ' . describe($e));
        return 'wrong password refused';
    }
    throw new CheckFailed('login with a wrong password succeeded');
}

$scenarios = [
    'login_scram' => fn() => login($P['user'], $P['password']),
    'login_md5' => fn() => login($P['md5_user'], $P['md5_password']),

    'simple_query' => function () {
        $c = connect();
        // exec() sends a simple Query (PQexec), so several statements are allowed.
        $c->exec("SELECT 1; SELECT 'x' || 'y'");
        check($c->query("SELECT 'x' || 'y'")->fetchColumn() === 'xy', 'result');
        return 'PDO::exec (simple protocol)';
    },

    'param_query' => function () {
        $c = connect();
        $s = "héllo 'quoted' \\ \"";
        $bin = "\x00\x01\xff'";
        $st = $c->prepare('SELECT ?::int, ?::text, ?::text, ?::bool, ?::numeric, ?::bytea');
        $st->bindValue(1, 42, PDO::PARAM_INT);
        $st->bindValue(2, $s);
        $st->bindValue(3, null, PDO::PARAM_NULL);
        $st->bindValue(4, true, PDO::PARAM_BOOL);
        $st->bindValue(5, '12.345');
        $st->bindValue(6, $bin, PDO::PARAM_LOB);
        $st->execute();
        $row = $st->fetch(PDO::FETCH_NUM);
        $b = is_resource($row[5]) ? stream_get_contents($row[5]) : $row[5];
        check($row[0] === 42 && $row[1] === $s && $row[2] === null && $row[3] === true && $row[4] === '12.345'
            && $b === $bin, 'round trip ' . json_encode([$row[0], $row[1], $row[2], $row[3], $row[4]]));
        return null;
    },

    'prepared_reuse' => function () {
        global $P;
        run_clients($P['clients'], function (int $cid) {
            $c = connect();
            $st = $c->prepare('SELECT ?::int * 2 + ?::int, ?::text');
            for ($j = 0; $j < PREPARED_REUSES; $j++) {
                $c->beginTransaction();
                $st->execute([$cid, $j, "c$cid"]);
                $row = $st->fetch(PDO::FETCH_NUM);
                $st->closeCursor();
                $c->commit();
                check($row == [$cid * 2 + $j, "c$cid"], "client $cid got " . json_encode($row) . " at $j");
            }
        });
        return "{$P['clients']} clients (forked) x " . PREPARED_REUSES . ' transactions, PDO prepared statement';
    },

    'transaction' => function () {
        $c = connect();
        $other = connect();
        $t = table($c);
        try {
            $c->beginTransaction();
            $c->exec("INSERT INTO $t VALUES (1, 'committed')");
            $c->commit();
            $c->beginTransaction();
            $c->exec("INSERT INTO $t VALUES (2, 'rolled back')");
            $c->rollBack();
            $ks = $other->query("SELECT k FROM $t ORDER BY k")->fetchAll(PDO::FETCH_COLUMN);
            check($ks === [1], 'visible rows ' . json_encode($ks) . ', expected [1]');
        } finally {
            $c->exec("DROP TABLE $t");
        }
        return null;
    },

    'error_recovery' => function () {
        $c = connect();
        $t = table($c);
        try {
            expect_state(fn() => $c->exec('SELECT 1/0'), '22012');
            expect_state(fn() => scalar($c, 'SELECT ?::int / 0', [1]), '22012');
            check(scalar($c, 'SELECT 2') === 2, 'query after error');
            $c->beginTransaction();
            $c->exec("INSERT INTO $t VALUES (1, 'x')");
            expect_state(fn() => scalar($c, 'SELECT ?::int / 0', [1]), '22012');
            expect_state(fn() => scalar($c, 'SELECT 1'), '25P02');
            $c->rollBack();
            check(scalar($c, 'SELECT 3') === 3, 'query after rollback');
            $n = scalar($c, "SELECT count(*) FROM $t");
            check($n === 0, "rolled-back insert visible ($n rows)");
        } finally {
            if ($c->inTransaction()) {
                $c->rollBack();
            }
            $c->exec("DROP TABLE $t");
        }
        return null;
    },

    'copy_in' => function () {
        $c = connect();
        $t = table($c);
        try {
            $lines = [];
            for ($i = 0; $i < ROWS_COPY; $i++) {
                $v = $i % 1000 === 0 ? "row-$i\\ttab\\\\back" : "row-$i";
                $lines[] = "$i\t$v";
            }
            check($c->pgsqlCopyFromArray($t, $lines, "\t", '\\\\N', 'k, v'), 'pgsqlCopyFromArray returned false');
            $got = $c->query("SELECT count(*), sum(k) FROM $t")->fetch(PDO::FETCH_NUM);
            check($got == [ROWS_COPY, ROWS_COPY * (ROWS_COPY - 1) / 2], 'count/sum ' . json_encode($got));
            $v = scalar($c, "SELECT v FROM $t WHERE k = 1000");
            check($v === "row-1000\ttab\\back", 'escaped value ' . json_encode($v));
        } finally {
            $c->exec("DROP TABLE $t");
        }
        return 'PDO::pgsqlCopyFromArray';
    },

    'copy_out' => function () {
        $c = connect();
        $t = table($c);
        try {
            $c->exec("INSERT INTO $t SELECT g, 'v' || g FROM generate_series(1, " . ROWS_COPY . ') g');
            // pgsqlCopyToArray copies a table (it builds the COPY statement itself).
            $rows = $c->pgsqlCopyToArray($t, "\t", '\\\\N', 'k, v');
            check(is_array($rows) && count($rows) === ROWS_COPY, 'copy out row count');
            $want = [];
            for ($i = 1; $i <= ROWS_COPY; $i++) {
                $want[] = "$i\tv$i\n";
            }
            sort($rows);
            sort($want);
            check($rows === $want, 'copy out mismatch');
        } finally {
            $c->exec("DROP TABLE $t");
        }
        return 'PDO::pgsqlCopyToArray';
    },

    'large_result' => function () {
        $c = connect();
        $rows = $c->query('SELECT g, md5(g::text) FROM generate_series(1, ' . ROWS_LARGE . ') g')->fetchAll(PDO::FETCH_NUM);
        check(count($rows) === ROWS_LARGE, count($rows) . ' rows');
        foreach ($rows as $i => [$g, $h]) {
            if ($g !== $i + 1 || $h !== md5((string) ($i + 1))) {
                throw new CheckFailed('row ' . ($i + 1) . " is $g $h");
            }
        }
        return null;
    },

    'large_bytea' => function () {
        $data = payload();
        $c = connect();
        $st = $c->prepare('SELECT length(x), md5(x), x FROM (SELECT ?::bytea AS x) s');
        $st->bindValue(1, $data, PDO::PARAM_LOB);
        $st->execute();
        $row = $st->fetch(PDO::FETCH_NUM);
        $back = is_resource($row[2]) ? stream_get_contents($row[2]) : $row[2];
        check($row[0] === strlen($data) && $row[1] === md5($data), "server saw length {$row[0]} md5 {$row[1]}");
        check($back === $data, 'bytes read back differ');
        return null;
    },

    'listen_notify' => function () {
        global $P;
        $channel = unique('ch');
        $listener = connect();
        $sender = connect();
        try {
            $listener->exec("LISTEN $channel");
        } catch (PDOException $e) {
            // A refusal must say so: SQLSTATE 0A000 or a message naming LISTEN.
            if ($P['mode'] === 'transaction' && (($e->errorInfo[0] ?? '') === '0A000' || stripos($e->getMessage(), 'listen') !== false)) {
                throw new NotApplicable(LISTEN_TXN_NA . describe($e));
            }
            throw $e;
        }
        scalar($sender, 'SELECT pg_notify(?, ?)', [$channel, 'payload-1']);
        $n = $listener->pgsqlGetNotify(PDO::FETCH_ASSOC, 5000);
        if ($n === false && $P['mode'] === 'transaction') {
            throw new CheckFailed(LISTEN_TXN_SILENT);
        }
        check($n !== false && $n['message'] === $channel && $n['payload'] === 'payload-1', 'notification ' . json_encode($n));
        return 'notification received';
    },

    'cancel' => fn() => throw new NotApplicable('PDO has no API to cancel a running statement'),

    'statement_timeout' => function () {
        $c = connect();
        $t0 = microtime(true);
        $c->beginTransaction();
        $c->exec("SET LOCAL statement_timeout = '100ms'");
        expect_state(fn() => $c->exec('SELECT pg_sleep(5)'), '57014');
        $c->rollBack();
        check(microtime(true) - $t0 < 3, 'statement_timeout took too long');
        check(scalar($c, 'SELECT 8') === 8, 'connection unusable after timeout');
        $st = $c->query('SHOW statement_timeout')->fetchColumn();
        check($st === '0', "SET LOCAL leaked: statement_timeout=$st");
        return null;
    },

    'batch' => fn() => throw new NotApplicable('PDO has no batch or pipeline API'),

    'pool_churn' => function () {
        global $P;
        for ($i = 0; $i < $P['churn']; $i++) {
            $c = connect();
            $got = scalar($c, 'SELECT ?::int', [$i]);
            $c = null;
            check($got === $i, "cycle $i got $got");
        }
        return "{$P['churn']} connections";
    },

    'concurrent_clients' => function () {
        global $P;
        $t = table(connect(), 'cid int, i int, v text');
        try {
            run_clients($P['clients'], function (int $cid) use ($t) {
                $c = connect();
                for ($i = 0; $i < TXNS_PER_CLIENT; $i++) {
                    $c->beginTransaction();
                    $c->prepare("INSERT INTO $t VALUES (?, ?, ?)")->execute([$cid, $i, "c$cid-$i"]);
                    $got = scalar($c, 'SELECT ?::int * 1000 + ?::int', [$cid, $i]);
                    check($got === $cid * 1000 + $i, "client $cid got $got at $i");
                    $c->commit();
                }
                $st = $c->prepare("SELECT i, v FROM $t WHERE cid = ? ORDER BY i");
                $st->execute([$cid]);
                $rows = $st->fetchAll(PDO::FETCH_NUM);
                $want = [];
                for ($i = 0; $i < TXNS_PER_CLIENT; $i++) {
                    $want[] = [$i, "c$cid-$i"];
                }
                check($rows === $want, "client $cid rows " . json_encode($rows));
            });
        } finally {
            connect()->exec("DROP TABLE $t");
        }
        return "{$P['clients']} clients (forked processes)";
    },
];

function scenario_names(): array
{
    $path = envv('DRV_SCENARIOS_FILE', __DIR__ . '/../scenarios.py');
    $src = file_get_contents($path);
    $start = strpos($src, 'SCENARIO_TABLE');
    $block = substr($src, $start, strpos($src, "\n]\n", $start) - $start);
    preg_match_all('/^\s+\(?\s*"([a-z_0-9]+)",/m', $block, $m);
    return $m[1];
}

function emit(string $scenario, string $status, string $detail): void
{
    echo json_encode(['driver' => NAME, 'scenario' => $scenario, 'status' => $status, 'detail' => $detail],
        JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
    fflush(STDOUT);
}

// PHP cannot interrupt a call blocked in libpq, so each scenario runs in a forked process that the
// parent kills (with its process group, i.e. forked clients too) when DRV_TIMEOUT passes.
function run_isolated(callable $fn, float $timeout): array
{
    $file = tempnam(sys_get_temp_dir(), 'drv');
    $pid = pcntl_fork();
    if ($pid === 0) {
        posix_setpgid(0, 0);
        try {
            $r = ['pass', $fn()];
        } catch (NotApplicable $e) {
            $r = ['na', $e->getMessage()];
        } catch (Throwable $e) {
            $r = ['fail', describe($e)];
        }
        file_put_contents($file, json_encode($r, JSON_INVALID_UTF8_SUBSTITUTE));
        exit(0);
    }
    $deadline = microtime(true) + $timeout;
    while (pcntl_waitpid($pid, $status, WNOHANG) === 0) {
        if (microtime(true) > $deadline) {
            posix_kill(-$pid, SIGKILL);
            posix_kill($pid, SIGKILL);
            pcntl_waitpid($pid, $status);
            @unlink($file);
            return ['fail', sprintf('timed out after %.0fs', $timeout)];
        }
        usleep(20000);
    }
    $r = json_decode((string) @file_get_contents($file), true);
    @unlink($file);
    return is_array($r) ? $r : ['fail', "scenario process ended with status $status and no result"];
}

$probe = connect();
echo json_encode(['driver' => NAME, 'version' => 'PHP ' . PHP_VERSION . ', PDO_pgsql (libpq '
    . $probe->getAttribute(PDO::ATTR_CLIENT_VERSION) . ')']), "\n";
$probe = null;
$timeout = (float) envv('DRV_TIMEOUT', '60');
foreach (scenario_names() as $name) {
    if ($P['only'] && !in_array($name, $P['only'], true)) {
        continue;
    }
    if (!isset($scenarios[$name])) {
        emit($name, 'fail', 'scenario not implemented by this program');
        continue;
    }
    $t0 = microtime(true);
    [$status, $detail] = run_isolated($scenarios[$name], $timeout);
    if ($status === 'pass') {
        $detail = sprintf('%s (%.2fs)', $detail ?: 'ok', microtime(true) - $t0);
    }
    emit($name, $status, (string) $detail);
}
