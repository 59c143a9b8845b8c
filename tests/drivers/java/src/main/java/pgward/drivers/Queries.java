package pgward.drivers;

import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

import org.postgresql.jdbc.PgResultSetMetaData;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

/**
 * Data-driven queries for the masking tests: a file of lines "check TAB text|binary TAB sql". Each
 * result is printed as one JSON object (the column formats and every value as a string, or the
 * server's error); the pytest side decides what is right.
 */
final class Queries {

    private Queries() {
    }

    static void run(Path file, Connection text, Connection binary) throws Exception {
        for (String line : Files.readAllLines(file)) {
            if (line.isEmpty()) {
                continue;
            }
            String[] parts = line.split("\t", 3);
            long t0 = System.nanoTime();
            if (parts.length != 3) {
                PgjdbcCheck.emit("queries", false, "malformed line: " + line);
                continue;
            }
            try {
                String detail = "binary".equals(parts[1]) ? prepared(binary, parts[2]) : simple(text, parts[2]);
                PgjdbcCheck.emit(parts[0], true, detail, (System.nanoTime() - t0) / 1_000_000, true);
            } catch (PSQLException e) {
                ServerErrorMessage m = e.getServerErrorMessage();
                if (m == null) {
                    PgjdbcCheck.emit(parts[0], false, e.toString());
                } else {
                    PgjdbcCheck.emit(parts[0], true, PgjdbcCheck.obj("sqlstate", m.getSQLState(), "message",
                            m.getMessage(), "detail", m.getDetail(), "hint", m.getHint()), -1, true);
                }
            } catch (Exception e) {
                PgjdbcCheck.emit(parts[0], false, e.toString());
            }
        }
    }

    private static String simple(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            return rows(rs);
        }
    }

    private static String prepared(Connection conn, String sql) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(sql); ResultSet rs = ps.executeQuery()) {
            return rows(rs);
        }
    }

    private static String rows(ResultSet rs) throws SQLException {
        int n = rs.getMetaData().getColumnCount();
        PgResultSetMetaData md = rs.getMetaData().unwrap(PgResultSetMetaData.class);
        StringBuilder sb = new StringBuilder("{\"formats\": [");
        for (int i = 1; i <= n; i++) {
            sb.append(i > 1 ? ", " : "").append(md.getFormat(i));
        }
        sb.append("], \"rows\": [");
        boolean first = true;
        while (rs.next()) {
            sb.append(first ? "[" : ", [");
            first = false;
            for (int i = 1; i <= n; i++) {
                String v = rs.getString(i);
                sb.append(i > 1 ? ", " : "").append(v == null ? "null" : PgjdbcCheck.quote(v));
            }
            sb.append(']');
        }
        return sb.append("]}").toString();
    }
}
