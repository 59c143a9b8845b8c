package pgward.drivers;

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

/**
 * Runs pgjdbc against the endpoint named by PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD and
 * PGSSLROOTCERT (TLS with full verification), printing one JSON object per check and exiting 1 when
 * any check failed.
 */
public final class PgjdbcCheck {

    private interface Check {
        Object run(Connection conn) throws Exception;
    }

    private static int failures = 0;

    public static void main(String[] args) throws Exception {
        String host = env("PGHOST", "127.0.0.1");
        String port = env("PGPORT", "5432");
        String db = env("PGDATABASE", "shop");
        String rootCert = System.getenv("PGSSLROOTCERT");
        if (rootCert == null || rootCert.isEmpty()) {
            emit("connect_tls", false, "PGSSLROOTCERT is not set: full TLS verification is required");
            System.exit(1);
        }
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + db
                + "?sslmode=verify-full&sslrootcert=" + rootCert
                // Server-side prepared statements from the first execution, results in binary,
                // numeric (1700) included in binary transfer.
                + "&prepareThreshold=1&binaryTransfer=true&binaryTransferEnable=1700"
                + "&connectTimeout=20&socketTimeout=120&ApplicationName=pgward-pgjdbc-check";
        Properties props = new Properties();
        props.setProperty("user", env("PGUSER", "postgres"));
        props.setProperty("password", env("PGPASSWORD", ""));

        Connection conn;
        long t0 = System.nanoTime();
        try {
            conn = DriverManager.getConnection(url, props);
        } catch (SQLException e) {
            emit("connect_tls", false, describe(e));
            System.exit(1);
            return;
        }
        emit("connect_tls", true, obj("driver", "pgjdbc " + conn.getMetaData().getDriverVersion(),
                "server_version", conn.getMetaData().getDatabaseProductVersion(), "sslmode", "verify-full"),
                (System.nanoTime() - t0) / 1_000_000, true);

        String queries = System.getenv("PGWARD_QUERIES");
        if (queries != null && !queries.isEmpty()) {
            // Text: the simple protocol. Binary: server-prepared from the first execution, with binary
            // transfer for text types too (pgjdbc leaves them in text format unless told).
            String textUrl = url + "&preferQueryMode=simple";
            String binaryUrl = url.replace("prepareThreshold=1", "prepareThreshold=-1")
                    .replace("binaryTransferEnable=1700", "binaryTransferEnable=1700,25,1043,1042,114,3802");
            try (Connection text = DriverManager.getConnection(textUrl, props);
                 Connection binary = DriverManager.getConnection(binaryUrl, props)) {
                Queries.run(java.nio.file.Path.of(queries), text, binary);
            }
            conn.close();
            System.exit(failures == 0 ? 0 : 1);
        }
        run(conn, "simple_query", PgjdbcCheck::simpleQuery);
        run(conn, "prepared_statement", PgjdbcCheck::prepared);
        run(conn, "binary_results", PgjdbcCheck::binary);
        run(conn, "transaction_rollback", PgjdbcCheck::transaction);
        run(conn, "copy_out", PgjdbcCheck::copyOut);
        run(conn, "copy_in", PgjdbcCheck::copyIn);
        run(conn, "cancel", PgjdbcCheck::cancel);
        run(conn, "error_recovery", PgjdbcCheck::errorRecovery);
        conn.close();
        System.exit(failures == 0 ? 0 : 1);
    }

    // ------------------------------------------------------------------ checks

    private static Object simpleQuery(Connection conn) throws Exception {
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("select count(*) from shop.customers")) {
            rs.next();
            long n = rs.getLong(1);
            require(n >= 1000, "expected >= 1000 customers, got " + n);
            return obj("customers", n);
        }
    }

    private static Object prepared(Connection conn) throws Exception {
        List<String> names = new ArrayList<>();
        boolean serverPrepared = false;
        try (PreparedStatement ps = conn.prepareStatement("select name from shop.customers where id = ?")) {
            // Several executions: the first ones may be unnamed, later ones use the named server statement.
            for (int round = 0; round < 2; round++) {
                for (int id : new int[] {1, 2, 3, 500, 1000}) {
                    ps.setInt(1, id);
                    try (ResultSet rs = ps.executeQuery()) {
                        require(rs.next(), "no customer with id " + id);
                        String name = rs.getString(1);
                        require(name != null && !name.isEmpty(), "empty name for id " + id);
                        if (round == 0) {
                            names.add(name);
                        } else {
                            require(name.equals(names.get(indexOf(id))),
                                    "different name on re-execution for id " + id);
                        }
                    }
                }
            }
            serverPrepared = ps.unwrap(PGStatement.class).isUseServerPrepare();
        }
        long matches;
        try (PreparedStatement ps = conn.prepareStatement("select count(*) from shop.customers where name = ?")) {
            ps.setString(1, names.get(0));
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                matches = rs.getLong(1);
            }
        }
        require(matches >= 1, "text parameter matched no rows");
        return obj("names", names.size(), "server_prepared", serverPrepared, "text_param_matches", matches);
    }

    private static int indexOf(int id) {
        int[] ids = {1, 2, 3, 500, 1000};
        for (int i = 0; i < ids.length; i++) {
            if (ids[i] == id) {
                return i;
            }
        }
        return -1;
    }

    private static Object binary(Connection conn) throws Exception {
        String sql = "select count(*)::int8, sum(amount), max(created_at), min(id)::int4 from shop.orders where id <= ?";
        Object[] viaBinary = new Object[4];
        boolean serverPrepared;
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            // Run a few times so the named, binary-result statement is certainly in use.
            for (int i = 0; i < 3; i++) {
                ps.setInt(1, 4000);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    viaBinary[0] = rs.getLong(1);
                    viaBinary[1] = rs.getBigDecimal(2);
                    viaBinary[2] = rs.getObject(3, OffsetDateTime.class);
                    viaBinary[3] = rs.getInt(4);
                }
            }
            serverPrepared = ps.unwrap(PGStatement.class).isUseServerPrepare();
        }
        Object[] viaText = new Object[4];
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery(sql.replace("?", "4000"))) {
            rs.next();
            viaText[0] = rs.getLong(1);
            viaText[1] = rs.getBigDecimal(2);
            viaText[2] = rs.getObject(3, OffsetDateTime.class);
            viaText[3] = rs.getInt(4);
        }
        require(serverPrepared, "the statement was not server-prepared (no binary results)");
        require(viaBinary[0].equals(viaText[0]), "count differs: " + viaBinary[0] + " vs " + viaText[0]);
        require(((BigDecimal) viaBinary[1]).compareTo((BigDecimal) viaText[1]) == 0,
                "sum differs: " + viaBinary[1] + " vs " + viaText[1]);
        require(((OffsetDateTime) viaBinary[2]).toInstant().equals(((OffsetDateTime) viaText[2]).toInstant()),
                "timestamptz differs: " + viaBinary[2] + " vs " + viaText[2]);
        require(viaBinary[3].equals(viaText[3]), "int4 differs");
        require((Long) viaBinary[0] == 4000L, "expected 4000 orders, got " + viaBinary[0]);
        return obj("count", viaBinary[0], "sum", viaBinary[1].toString(), "max_created_at", viaBinary[2].toString(),
                "server_prepared", serverPrepared);
    }

    private static Object transaction(Connection conn) throws Exception {
        conn.setAutoCommit(false);
        try (Statement st = conn.createStatement()) {
            st.execute("create temp table pgward_jdbc_tx (id int, note text)");
            try (PreparedStatement ps = conn.prepareStatement("insert into pgward_jdbc_tx values (?, ?)")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "row " + i);
                    ps.addBatch();
                }
                ps.executeBatch();
            }
            try (ResultSet rs = st.executeQuery("select count(*) from pgward_jdbc_tx")) {
                rs.next();
                require(rs.getLong(1) == 10, "expected 10 rows inside the transaction");
            }
            conn.rollback();
        } finally {
            conn.setAutoCommit(true);
        }
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("select to_regclass('pg_temp.pgward_jdbc_tx') is null")) {
            rs.next();
            require(rs.getBoolean(1), "the temp table survived the rollback");
        }
        return obj("rolled_back", true);
    }

    private static Object copyOut(Connection conn) throws Exception {
        CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
        StringWriter out = new StringWriter();
        long reported = copy.copyOut("COPY shop.orders TO STDOUT", out);
        long lines = out.toString().lines().count();
        long expected;
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select count(*) from shop.orders")) {
            rs.next();
            expected = rs.getLong(1);
        }
        require(lines == expected && reported == expected,
                "COPY TO returned " + lines + " lines (reported " + reported + "), table has " + expected);
        require(expected >= 5000, "expected >= 5000 orders, got " + expected);
        return obj("lines", lines, "bytes", out.getBuffer().length());
    }

    private static Object copyIn(Connection conn) throws Exception {
        try (Statement st = conn.createStatement()) {
            st.execute("create temp table pgward_jdbc_copy (id int, amount numeric(10,2), note text)");
        }
        StringBuilder data = new StringBuilder();
        for (int i = 1; i <= 2000; i++) {
            data.append(i).append('\t').append(i).append(".25\tnote ").append(i).append('\n');
        }
        CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
        long n = copy.copyIn("COPY pgward_jdbc_copy FROM STDIN", new StringReader(data.toString()));
        long count;
        BigDecimal sum;
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("select count(*), sum(amount) from pgward_jdbc_copy")) {
            rs.next();
            count = rs.getLong(1);
            sum = rs.getBigDecimal(2);
        }
        try (Statement st = conn.createStatement()) {
            st.execute("drop table pgward_jdbc_copy");
        }
        require(n == 2000 && count == 2000, "COPY FROM loaded " + n + " rows, table has " + count);
        require(sum.compareTo(new BigDecimal("2001500.00")) == 0, "unexpected sum " + sum);
        return obj("rows", count);
    }

    private static Object cancel(Connection conn) throws Exception {
        ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
        long t0 = System.nanoTime();
        String state = null;
        try (Statement st = conn.createStatement()) {
            timer.schedule(() -> {
                try {
                    st.cancel();
                } catch (SQLException e) {
                    System.err.println("cancel failed: " + e);
                }
            }, 500, TimeUnit.MILLISECONDS);
            try {
                st.execute("select pg_sleep(30)");
            } catch (SQLException e) {
                state = e.getSQLState();
            }
        } finally {
            timer.shutdownNow();
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        require("57014".equals(state), "expected SQLSTATE 57014, got " + state + " after " + secs + " s");
        require(secs < 10, "the cancel took " + secs + " s");
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select 42")) {
            rs.next();
            require(rs.getInt(1) == 42, "the session is unusable after the cancel");
        }
        return obj("sqlstate", state, "seconds", Math.round(secs * 1000) / 1000.0);
    }

    private static Object errorRecovery(Connection conn) throws Exception {
        String state = null;
        try (Statement st = conn.createStatement()) {
            st.executeQuery("select 1/0");
        } catch (SQLException e) {
            state = e.getSQLState();
        }
        require("22012".equals(state), "expected SQLSTATE 22012, got " + state);
        try (PreparedStatement ps = conn.prepareStatement("select ?::int + 1")) {
            ps.setInt(1, 41);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                require(rs.getInt(1) == 42, "wrong answer after the error");
            }
        }
        return obj("sqlstate", state, "then", 42);
    }

    // ------------------------------------------------------------------ plumbing

    private static void run(Connection conn, String name, Check check) {
        long t0 = System.nanoTime();
        try {
            Object detail = check.run(conn);
            emit(name, true, detail + "", (System.nanoTime() - t0) / 1_000_000, true);
        } catch (Throwable e) {
            emit(name, false, describe(e));
            try {
                if (!conn.getAutoCommit()) {
                    conn.rollback();
                    conn.setAutoCommit(true);
                }
            } catch (SQLException ignored) {
                // the next check reports it
            }
        }
    }

    private static final class CheckFailed extends Exception {
        CheckFailed(String message) {
            super(message);
        }
    }

    private static void require(boolean cond, String message) throws CheckFailed {
        if (!cond) {
            throw new CheckFailed(message);
        }
    }

    private static String describe(Throwable e) {
        if (e instanceof SQLException sql) {
            return e.getClass().getSimpleName() + " [" + sql.getSQLState() + "]: " + e.getMessage();
        }
        return e.getClass().getSimpleName() + ": " + e.getMessage();
    }

    private static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    /** A JSON object from alternating keys and values (strings, numbers, booleans). */
    static String obj(Object... kv) {
        StringBuilder sb = new StringBuilder("{");
        for (int i = 0; i < kv.length; i += 2) {
            if (i > 0) {
                sb.append(", ");
            }
            sb.append(quote(kv[i].toString())).append(": ").append(value(kv[i + 1]));
        }
        return sb.append('}').toString();
    }

    static String value(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Number || v instanceof Boolean) {
            return v.toString();
        }
        return quote(v.toString());
    }

    static String quote(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }

    static void emit(String check, boolean ok, String detail) {
        emit(check, ok, quote(detail), -1, true);
    }

    static void emit(String check, boolean ok, String detailJson, long ms, boolean raw) {
        if (!ok) {
            failures++;
        }
        String line = "{\"check\": " + quote(check) + ", \"ok\": " + ok + ", \"detail\": " + detailJson
                + (ms >= 0 ? ", \"ms\": " + ms : "") + "}";
        System.out.println(line);
        System.out.flush();
    }
}
