// pgjdbc driver program (Debian's libpostgresql-jdbc-java): the canonical scenarios with
// PreparedStatement (server-prepared after prepareThreshold executions), executeBatch, a
// setFetchSize cursor inside a transaction, CopyManager, Statement.cancel and getNotifications.
// One JSON line per scenario. Usage: java PgJdbcDriver [--prepare-threshold N]

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class PgJdbcDriver {
    static final int ROWS_LARGE = 100_000;
    static final int ROWS_COPY = 10_000;
    static final int BYTEA_SIZE = 10 * 1024 * 1024;
    static final int BATCH_SIZE = 500;
    static final int TXNS_PER_CLIENT = 10;
    static final int PREPARED_REUSES = 20;
    static final String LISTEN_TXN_NA = "impossible by design in transaction mode; the pooler refused LISTEN: ";
    static final String LISTEN_TXN_SILENT = "LISTEN was accepted silently in transaction mode and the notification "
            + "was lost; the pooler must refuse LISTEN with a clear error";

    static String env(String key, String def) {
        String v = System.getenv(key);
        return v == null ? def : v;
    }

    final String host = env("DRV_HOST", "127.0.0.1");
    final int port = Integer.parseInt(env("DRV_PORT", "5432"));
    final String db = env("DRV_DB", "app");
    final String user = env("DRV_USER", "app_scram");
    final String password = env("DRV_PASSWORD", "");
    final String md5User = env("DRV_MD5_USER", "app_md5");
    final String md5Password = env("DRV_MD5_PASSWORD", "");
    final String mode = env("DRV_MODE", "direct");
    final int clients = Integer.parseInt(env("DRV_CLIENTS", "30"));
    final int churn = Integer.parseInt(env("DRV_CHURN", "1000"));
    final double timeout = Double.parseDouble(env("DRV_TIMEOUT", "60"));
    // DRV_SSL=require (the matrix's -tls modes): TLS without certificate checks.
    final boolean ssl = env("DRV_SSL", "").equals("require");
    final Set<String> only = new HashSet<>();
    final String prepareThreshold;
    final String name;

    PgJdbcDriver(String prepareThreshold) {
        this.prepareThreshold = prepareThreshold;
        this.name = prepareThreshold == null ? "pgjdbc" : "pgjdbc-pt" + prepareThreshold;
        for (String s : env("DRV_ONLY", "").split(",")) {
            if (!s.isEmpty()) only.add(s);
        }
    }

    static class NotApplicable extends RuntimeException {
        NotApplicable(String m) { super(m); }
    }

    static class CheckFailed extends RuntimeException {
        CheckFailed(String m) { super(m); }
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new CheckFailed(what);
    }

    static String describe(Throwable e) {
        String state = e instanceof SQLException && ((SQLException) e).getSQLState() != null
                ? " [" + ((SQLException) e).getSQLState() + "]" : "";
        String msg = String.valueOf(e.getMessage()).split("\n")[0];
        String out = e.getClass().getSimpleName() + state + ": " + msg;
        return out.length() > 500 ? out.substring(0, 500) : out;
    }

    // A pooler's refusal of LISTEN must say so: SQLSTATE 0A000 or a message naming LISTEN.
    static boolean listenRefused(SQLException e) {
        return "0A000".equals(e.getSQLState()) || String.valueOf(e.getMessage()).toLowerCase().contains("listen");
    }

    static SQLException expectState(Executable fn, String... states) throws Exception {
        try {
            fn.run();
        } catch (SQLException e) {
            SQLException cur = e;
            // executeBatch reports the server error as the next exception of a BatchUpdateException.
            while (cur != null) {
                if (Arrays.asList(states).contains(cur.getSQLState())) return cur;
                cur = cur.getNextException();
            }
            throw new CheckFailed("expected SQLSTATE " + String.join("/", states) + ", got " + describe(e));
        }
        throw new CheckFailed("expected SQLSTATE " + String.join("/", states) + ", but the statement succeeded");
    }

    interface Executable {
        void run() throws Exception;
    }

    interface Client {
        void run(int cid) throws Exception;
    }

    Connection connect(String u, String pw) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", u);
        props.setProperty("password", pw);
        props.setProperty("connectTimeout", "10");
        if (prepareThreshold != null) props.setProperty("prepareThreshold", prepareThreshold);
        if (ssl) props.setProperty("sslmode", "require"); // (otherwise pgjdbc's default, prefer: SSLRequest, then N)
        return DriverManager.getConnection("jdbc:postgresql://" + host + ":" + port + "/" + db, props);
    }

    Connection connect() throws SQLException {
        return connect(user, password);
    }

    static long scalar(Connection c, String sql, Object... args) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < args.length; i++) ps.setObject(i + 1, args[i]);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "no row");
                return rs.getLong(1);
            }
        }
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        }
    }

    static String unique(String prefix) {
        return "drv_" + prefix + "_" + ProcessHandle.current().pid() + "_" + new Random().nextInt(1 << 30);
    }

    String table(Connection c, String cols) throws SQLException {
        String t = unique("t");
        exec(c, "CREATE TABLE " + t + " (" + cols + ")");
        return t;
    }

    static String md5hex(byte[] data) throws Exception {
        StringBuilder sb = new StringBuilder();
        for (byte b : MessageDigest.getInstance("MD5").digest(data)) sb.append(String.format("%02x", b));
        return sb.toString();
    }

    static List<Object[]> copyRows() {
        List<Object[]> rows = new ArrayList<>();
        for (int i = 0; i < ROWS_COPY; i++) {
            rows.add(new Object[] {i, i % 1000 == 0 ? "row-" + i + "\ttab\\back" : "row-" + i});
        }
        return rows;
    }

    void runClients(int n, Client fn) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(n);
        CountDownLatch start = new CountDownLatch(1);
        List<Future<?>> futures = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            final int cid = i;
            futures.add(pool.submit(() -> {
                start.await();
                fn.run(cid);
                return null;
            }));
        }
        start.countDown();
        int failed = 0;
        String first = null;
        for (int i = 0; i < n; i++) {
            try {
                futures.get(i).get();
            } catch (java.util.concurrent.ExecutionException e) {
                failed++;
                if (first == null) first = "client " + i + ": " + describe(e.getCause());
            }
        }
        pool.shutdown();
        if (failed > 0) throw new CheckFailed(failed + "/" + n + " clients failed; " + first);
    }

    String login(String u, String pw) throws Exception {
        try (Connection c = connect(u, pw); Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT current_user")) {
            rs.next();
            check(rs.getString(1).equals(u), "current_user is " + rs.getString(1) + ", expected " + u);
        }
        try (Connection c = connect(u, pw + "-wrong")) {
            throw new CheckFailed("login with a wrong password succeeded");
        } catch (SQLException e) {
            String m = String.valueOf(e.getMessage()).toLowerCase();
            check(m.contains("password") || m.contains("auth"), "unexpected login error: " + describe(e));
        }
        return "wrong password refused";
    }

    Map<String, Callable<String>> scenarios() {
        Map<String, Callable<String>> m = new LinkedHashMap<>();
        m.put("login_scram", () -> login(user, password));
        m.put("login_md5", () -> login(md5User, md5Password));

        m.put("simple_query", () -> {
            try (Connection c = connect(); Statement st = c.createStatement()) {
                check(st.execute("SELECT 1 AS a; SELECT 'x' || 'y' AS b"), "no first result");
                try (ResultSet rs = st.getResultSet()) {
                    check(rs.next() && rs.getInt(1) == 1, "first result set");
                }
                check(st.getMoreResults(), "second result set missing");
                try (ResultSet rs = st.getResultSet()) {
                    check(rs.next() && rs.getString(1).equals("xy"), "second result set");
                }
            }
            return "";
        });

        m.put("param_query", () -> {
            String s = "héllo 'quoted' \\ \"";
            byte[] bin = {0, 1, (byte) 255, '\''};
            try (Connection c = connect(); PreparedStatement ps = c.prepareStatement(
                    "SELECT ?::int, ?::text, ?::text, ?::bool, ?::numeric, ?::bytea")) {
                ps.setInt(1, 42);
                ps.setString(2, s);
                ps.setNull(3, Types.VARCHAR);
                ps.setBoolean(4, true);
                ps.setBigDecimal(5, new BigDecimal("12.345"));
                ps.setBytes(6, bin);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == 42 && rs.getString(2).equals(s) && rs.getString(3) == null
                            && rs.getBoolean(4) && rs.getBigDecimal(5).equals(new BigDecimal("12.345"))
                            && Arrays.equals(rs.getBytes(6), bin), "round trip");
                }
            }
            return "";
        });

        m.put("prepared_reuse", () -> {
            runClients(clients, cid -> {
                try (Connection c = connect(); PreparedStatement ps = c.prepareStatement(
                        "SELECT ?::int * 2 + ?::int, ?::text")) {
                    c.setAutoCommit(false);
                    for (int j = 0; j < PREPARED_REUSES; j++) {
                        ps.setInt(1, cid);
                        ps.setInt(2, j);
                        ps.setString(3, "c" + cid);
                        try (ResultSet rs = ps.executeQuery()) {
                            rs.next();
                            check(rs.getInt(1) == cid * 2 + j && rs.getString(2).equals("c" + cid),
                                    "client " + cid + " got " + rs.getInt(1) + " at " + j);
                        }
                        c.commit();
                    }
                }
            });
            return clients + " clients x " + PREPARED_REUSES + " transactions, prepareThreshold="
                    + (prepareThreshold == null ? "5 (default)" : prepareThreshold);
        });

        m.put("transaction", () -> {
            try (Connection c = connect(); Connection other = connect()) {
                String t = table(c, "k int, v text");
                try {
                    c.setAutoCommit(false);
                    exec(c, "INSERT INTO " + t + " VALUES (1, 'committed')");
                    c.commit();
                    exec(c, "INSERT INTO " + t + " VALUES (2, 'rolled back')");
                    c.rollback();
                    check(scalar(other, "SELECT count(*) FROM " + t) == 1, "row count after commit+rollback");
                    check(scalar(other, "SELECT max(k) FROM " + t) == 1, "committed row");
                } finally {
                    c.setAutoCommit(true);
                    exec(c, "DROP TABLE " + t);
                }
            }
            return "";
        });

        m.put("error_recovery", () -> {
            try (Connection c = connect()) {
                String t = table(c, "k int, v text");
                try {
                    expectState(() -> exec(c, "SELECT 1/0"), "22012");
                    expectState(() -> scalar(c, "SELECT ?::int / 0", 1), "22012");
                    check(scalar(c, "SELECT 2") == 2, "query after error");
                    c.setAutoCommit(false);
                    exec(c, "INSERT INTO " + t + " VALUES (1, 'x')");
                    expectState(() -> scalar(c, "SELECT ?::int / 0", 1), "22012");
                    expectState(() -> scalar(c, "SELECT 1"), "25P02");
                    c.rollback();
                    check(scalar(c, "SELECT 3") == 3, "query after rollback");
                    check(scalar(c, "SELECT count(*) FROM " + t) == 0, "rolled-back insert visible");
                    c.commit();
                } finally {
                    c.rollback();
                    c.setAutoCommit(true);
                    exec(c, "DROP TABLE " + t);
                }
            }
            return "";
        });

        m.put("copy_in", () -> {
            List<Object[]> rows = copyRows();
            StringBuilder sb = new StringBuilder();
            for (Object[] r : rows) {
                sb.append(r[0]).append('\t')
                        .append(((String) r[1]).replace("\\", "\\\\").replace("\t", "\\t")).append('\n');
            }
            try (Connection c = connect()) {
                String t = table(c, "k int, v text");
                try {
                    CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
                    long n = cm.copyIn("COPY " + t + " (k, v) FROM STDIN", new StringReader(sb.toString()));
                    check(n == ROWS_COPY, "copyIn reported " + n);
                    check(scalar(c, "SELECT count(*) FROM " + t) == ROWS_COPY, "count");
                    check(scalar(c, "SELECT sum(k) FROM " + t) == (long) ROWS_COPY * (ROWS_COPY - 1) / 2, "sum");
                    try (Statement st = c.createStatement();
                            ResultSet rs = st.executeQuery("SELECT v FROM " + t + " WHERE k = 1000")) {
                        rs.next();
                        check(rs.getString(1).equals(rows.get(1000)[1]), "escaped value " + rs.getString(1));
                    }
                } finally {
                    exec(c, "DROP TABLE " + t);
                }
            }
            return "CopyManager.copyIn";
        });

        m.put("copy_out", () -> {
            StringWriter w = new StringWriter();
            try (Connection c = connect()) {
                c.unwrap(PGConnection.class).getCopyAPI().copyOut(
                        "COPY (SELECT g, 'v' || g FROM generate_series(1, " + ROWS_COPY + ") g) TO STDOUT", w);
            }
            StringBuilder want = new StringBuilder();
            for (int i = 1; i <= ROWS_COPY; i++) want.append(i).append("\tv").append(i).append('\n');
            check(w.toString().equals(want.toString()), "copy out mismatch");
            return "CopyManager.copyOut";
        });

        m.put("large_result", () -> {
            try (Connection c = connect()) {
                // A fetch size inside a transaction makes pgjdbc read through a portal, 1000 rows a time.
                c.setAutoCommit(false);
                try (Statement st = c.createStatement()) {
                    st.setFetchSize(1000);
                    try (ResultSet rs = st.executeQuery(
                            "SELECT g, md5(g::text) FROM generate_series(1, " + ROWS_LARGE + ") g")) {
                        int i = 0;
                        while (rs.next()) {
                            i++;
                            if (rs.getInt(1) != i
                                    || !rs.getString(2).equals(md5hex(String.valueOf(i).getBytes(StandardCharsets.US_ASCII)))) {
                                throw new CheckFailed("row " + i + " is " + rs.getInt(1));
                            }
                        }
                        check(i == ROWS_LARGE, i + " rows");
                    }
                }
                c.commit();
            }
            return "setFetchSize(1000) cursor in a transaction";
        });

        m.put("large_bytea", () -> {
            byte[] data = new byte[BYTEA_SIZE];
            new Random(20240601).nextBytes(data);
            try (Connection c = connect(); PreparedStatement ps = c.prepareStatement(
                    "SELECT length(x), md5(x), x FROM (SELECT ?::bytea AS x) s")) {
                ps.setBytes(1, data);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == data.length && rs.getString(2).equals(md5hex(data)),
                            "server saw length " + rs.getInt(1) + " md5 " + rs.getString(2));
                    check(Arrays.equals(rs.getBytes(3), data), "bytes read back differ");
                }
            }
            return "";
        });

        m.put("listen_notify", () -> {
            String channel = unique("ch");
            try (Connection listener = connect(); Connection sender = connect()) {
                try {
                    exec(listener, "LISTEN " + channel);
                } catch (SQLException e) {
                    if (mode.equals("transaction") && listenRefused(e)) throw new NotApplicable(LISTEN_TXN_NA + describe(e));
                    throw e;
                }
                try (PreparedStatement ps = sender.prepareStatement("SELECT pg_notify(?, ?)")) {
                    ps.setString(1, channel);
                    ps.setString(2, "payload-1");
                    ps.execute();
                }
                PGNotification[] got = listener.unwrap(PGConnection.class).getNotifications(5000);
                if ((got == null || got.length == 0) && mode.equals("transaction")) {
                    throw new CheckFailed(LISTEN_TXN_SILENT);
                }
                check(got != null && got.length == 1 && got[0].getName().equals(channel)
                        && got[0].getParameter().equals("payload-1"), "notifications " + Arrays.toString(got));
            }
            return "notification received";
        });

        m.put("cancel", () -> {
            String marker = unique("cancel");
            try (Connection c = connect(); Connection monitor = connect(); Statement st = c.createStatement()) {
                AtomicReference<Throwable> err = new AtomicReference<>();
                Thread th = new Thread(() -> {
                    try {
                        st.execute("SELECT pg_sleep(10) /* " + marker + " */");
                    } catch (Throwable e) {
                        err.set(e);
                    }
                });
                th.start();
                String probe = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE ?";
                long deadline = System.nanoTime() + 5_000_000_000L;
                while (scalar(monitor, probe, "%" + marker + " */") == 0) {
                    check(System.nanoTime() < deadline, "pg_sleep never showed up in pg_stat_activity");
                    Thread.sleep(20);
                }
                long t0 = System.nanoTime();
                st.cancel();
                th.join(5000);
                check(!th.isAlive(), "query still running 5s after cancel");
                Throwable e = err.get();
                check(e instanceof SQLException && "57014".equals(((SQLException) e).getSQLState()),
                        "expected 57014, got " + (e == null ? "success" : describe(e)));
                double took = (System.nanoTime() - t0) / 1e9;
                check(scalar(c, "SELECT 7") == 7, "connection unusable after cancel");
                return String.format("cancelled after %.2fs (Statement.cancel)", took);
            }
        });

        m.put("statement_timeout", () -> {
            try (Connection c = connect()) {
                long t0 = System.nanoTime();
                c.setAutoCommit(false);
                exec(c, "SET LOCAL statement_timeout = '100ms'");
                expectState(() -> exec(c, "SELECT pg_sleep(5)"), "57014");
                c.rollback();
                c.setAutoCommit(true);
                check(System.nanoTime() - t0 < 3_000_000_000L, "statement_timeout took too long");
                check(scalar(c, "SELECT 8") == 8, "connection unusable after timeout");
                try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SHOW statement_timeout")) {
                    rs.next();
                    check(rs.getString(1).equals("0"), "SET LOCAL leaked: statement_timeout=" + rs.getString(1));
                }
            }
            return "";
        });

        m.put("batch", () -> {
            try (Connection c = connect()) {
                String t = table(c, "k int, v text");
                try {
                    try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                        for (int i = 0; i < BATCH_SIZE; i++) {
                            ps.setInt(1, i);
                            ps.setString(2, "p" + i);
                            ps.addBatch();
                        }
                        int[] counts = ps.executeBatch();
                        check(counts.length == BATCH_SIZE, "executeBatch returned " + counts.length + " counts");
                    }
                    check(scalar(c, "SELECT count(*) FROM " + t) == BATCH_SIZE, "count");
                    check(scalar(c, "SELECT sum(k) FROM " + t) == (long) BATCH_SIZE * (BATCH_SIZE - 1) / 2, "sum");
                    c.setAutoCommit(false);
                    try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?::int / ?)")) {
                        int[][] rows = {{-1, 1, 1}, {-2, 1, 0}, {-3, 1, 1}};
                        for (int[] r : rows) {
                            ps.setInt(1, r[0]);
                            ps.setInt(2, r[1]);
                            ps.setInt(3, r[2]);
                            ps.addBatch();
                        }
                        SQLException e = expectState(ps::executeBatch, "22012");
                        check(e != null, "no error");
                    }
                    c.rollback();
                    c.setAutoCommit(true);
                    check(scalar(c, "SELECT 9") == 9, "connection unusable after failed batch");
                    check(scalar(c, "SELECT count(*) FROM " + t + " WHERE k < 0") == 0, "failed batch left rows");
                } finally {
                    c.setAutoCommit(true);
                    exec(c, "DROP TABLE " + t);
                }
            }
            return "executeBatch";
        });

        m.put("pool_churn", () -> {
            for (int i = 0; i < churn; i++) {
                try (Connection c = connect()) {
                    long got = scalar(c, "SELECT ?::int", i);
                    check(got == i, "cycle " + i + " got " + got);
                }
            }
            return churn + " connections";
        });

        m.put("concurrent_clients", () -> {
            String t;
            try (Connection c = connect()) {
                t = table(c, "cid int, i int, v text");
            }
            try {
                runClients(clients, cid -> {
                    try (Connection c = connect()) {
                        c.setAutoCommit(false);
                        for (int i = 0; i < TXNS_PER_CLIENT; i++) {
                            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?, ?)")) {
                                ps.setInt(1, cid);
                                ps.setInt(2, i);
                                ps.setString(3, "c" + cid + "-" + i);
                                ps.executeUpdate();
                            }
                            long got = scalar(c, "SELECT ?::int * 1000 + ?::int", cid, i);
                            check(got == cid * 1000L + i, "client " + cid + " got " + got + " at " + i);
                            c.commit();
                        }
                        try (PreparedStatement ps = c.prepareStatement(
                                "SELECT i, v FROM " + t + " WHERE cid = ? ORDER BY i")) {
                            ps.setInt(1, cid);
                            try (ResultSet rs = ps.executeQuery()) {
                                int k = 0;
                                while (rs.next()) {
                                    check(rs.getInt(1) == k && rs.getString(2).equals("c" + cid + "-" + k),
                                            "client " + cid + " row " + k);
                                    k++;
                                }
                                check(k == TXNS_PER_CLIENT, "client " + cid + " has " + k + " rows");
                            }
                        }
                        c.commit();
                    }
                });
            } finally {
                try (Connection c = connect()) {
                    exec(c, "DROP TABLE " + t);
                }
            }
            return clients + " clients";
        });
        return m;
    }

    static List<String> scenarioNames() throws Exception {
        String path = env("DRV_SCENARIOS_FILE", "");
        if (path.isEmpty()) {
            Path here = Paths.get(PgJdbcDriver.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            path = here.resolve("../../../scenarios.py").normalize().toString();
        }
        String src = Files.readString(Path.of(path));
        int start = src.indexOf("SCENARIO_TABLE");
        String block = src.substring(start, src.indexOf("\n]\n", start));
        List<String> names = new ArrayList<>();
        Matcher mt = Pattern.compile("(?m)^\\s+\\(?\\s*\"([a-z_0-9]+)\",").matcher(block);
        while (mt.find()) names.add(mt.group(1));
        return names;
    }

    static String json(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') sb.append('\\').append(ch);
            else if (ch < 0x20) sb.append(String.format("\\u%04x", (int) ch));
            else sb.append(ch);
        }
        return sb.append('"').toString();
    }

    synchronized void emit(String scenario, String status, String detail) {
        System.out.println("{\"driver\": " + json(name) + ", \"scenario\": " + json(scenario) + ", \"status\": "
                + json(status) + ", \"detail\": " + json(detail) + "}");
        System.out.flush();
    }

    void run() throws Exception {
        System.out.println("{\"driver\": " + json(name) + ", \"version\": " + json("pgjdbc "
                + org.postgresql.util.DriverInfo.DRIVER_VERSION + ", Java " + System.getProperty("java.version")
                + (prepareThreshold == null ? ", prepareThreshold default (5)" : ", prepareThreshold=" + prepareThreshold))
                + "}");
        Map<String, Callable<String>> table = scenarios();
        for (String sc : scenarioNames()) {
            if (!only.isEmpty() && !only.contains(sc)) continue;
            Callable<String> fn = table.get(sc);
            if (fn == null) {
                emit(sc, "fail", "scenario not implemented by this program");
                continue;
            }
            ExecutorService ex = Executors.newSingleThreadExecutor(r -> {
                Thread t = new Thread(r);
                t.setDaemon(true);
                return t;
            });
            long t0 = System.nanoTime();
            Future<String> f = ex.submit(fn);
            try {
                String d = f.get((long) (timeout * 1000), TimeUnit.MILLISECONDS);
                double secs = (System.nanoTime() - t0) / 1e9;
                emit(sc, "pass", String.format("%s (%.2fs)", d == null || d.isEmpty() ? "ok" : d, secs));
            } catch (TimeoutException e) {
                f.cancel(true);
                emit(sc, "fail", String.format("timed out after %.0fs", timeout));
            } catch (java.util.concurrent.ExecutionException e) {
                Throwable cause = e.getCause();
                if (cause instanceof NotApplicable) emit(sc, "na", cause.getMessage());
                else emit(sc, "fail", describe(cause));
            }
            ex.shutdownNow();
        }
        System.exit(0);
    }

    public static void main(String[] args) throws Exception {
        String pt = null;
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--prepare-threshold")) pt = args[++i];
        }
        new PgJdbcDriver(pt).run();
    }
}
