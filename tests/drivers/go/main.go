// Command pgxcheck runs pgx v5 against the endpoint named by PGHOST, PGPORT, PGDATABASE, PGUSER,
// PGPASSWORD and PGSSLROOTCERT (TLS with full verification), printing one JSON object per check and
// exiting 1 when any check failed. With PGWARD_QUERIES it runs the queries of that file instead
// (queries.go).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgtype"
)

type result struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail any    `json:"detail"`
	Ms     int64  `json:"ms"`
}

var failures int

func emit(name string, ok bool, detail any, started time.Time) {
	if !ok {
		failures++
	}
	line, err := json.Marshal(result{Check: name, OK: ok, Detail: detail, Ms: time.Since(started).Milliseconds()})
	if err != nil {
		line = []byte(fmt.Sprintf(`{"check": %q, "ok": false, "detail": %q}`, name, err.Error()))
	}
	fmt.Println(string(line))
}

func describe(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Sprintf("[%s] %s", pgErr.Code, pgErr.Message)
	}
	return err.Error()
}

func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

type checkFn func(ctx context.Context, conn *pgx.Conn) (any, error)

func run(ctx context.Context, conn *pgx.Conn, name string, fn checkFn) {
	started := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	detail, err := fn(cctx, conn)
	if err != nil {
		emit(name, false, describe(err), started)
		return
	}
	emit(name, true, detail, started)
}

func main() {
	root := os.Getenv("PGSSLROOTCERT")
	if root == "" {
		emit("connect_tls", false, "PGSSLROOTCERT is not set: full TLS verification is required", time.Now())
		os.Exit(1)
	}
	ctx := context.Background()
	started := time.Now()
	// Host, port, database, user and password come from the PG* environment variables.
	cfg, err := pgx.ParseConfig(fmt.Sprintf("sslmode=verify-full sslrootcert='%s' connect_timeout=20 application_name=pgward-pgx-check",
		strings.ReplaceAll(root, "'", `\'`)))
	if err != nil {
		emit("connect_tls", false, err.Error(), started)
		os.Exit(1)
	}
	// Cancel a running statement with a CancelRequest when its context ends (pgx's default instead
	// closes the connection), and keep the session usable afterwards.
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, CancelRequestDelay: 0, DeadlineDelay: 10 * time.Second}
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		emit("connect_tls", false, describe(err), started)
		os.Exit(1)
	}
	defer conn.Close(ctx)
	tlsConn, isTLS := conn.PgConn().Conn().(*tls.Conn)
	if !isTLS {
		emit("connect_tls", false, "the connection is not TLS", started)
		os.Exit(1)
	}
	state := tlsConn.ConnectionState()
	emit("connect_tls", true, map[string]any{
		"driver":         "pgx v5",
		"server_version": conn.PgConn().ParameterStatus("server_version"),
		"tls_version":    tls.VersionName(state.Version),
		"cipher":         tls.CipherSuiteName(state.CipherSuite),
		"verified":       len(state.VerifiedChains) > 0,
	}, started)

	if path := os.Getenv("PGWARD_QUERIES"); path != "" {
		runQueries(ctx, conn, path)
		if failures > 0 {
			os.Exit(1)
		}
		return
	}
	run(ctx, conn, "simple_query", simpleQuery)
	run(ctx, conn, "prepared_statement", prepared)
	run(ctx, conn, "binary_results", binaryResults)
	run(ctx, conn, "transaction_rollback", transaction)
	run(ctx, conn, "copy_out", copyOut)
	run(ctx, conn, "copy_in", copyIn)
	run(ctx, conn, "cancel", cancelCheck)
	run(ctx, conn, "error_recovery", errorRecovery)
	if failures > 0 {
		os.Exit(1)
	}
}

func simpleQuery(ctx context.Context, conn *pgx.Conn) (any, error) {
	var n int64
	// The simple protocol: one Query message, text results.
	err := conn.QueryRow(ctx, "select count(*) from shop.customers", pgx.QueryExecModeSimpleProtocol).Scan(&n)
	if err != nil {
		return nil, err
	}
	if n < 1000 {
		return nil, fmt.Errorf("expected >= 1000 customers, got %d", n)
	}
	return map[string]any{"customers": n}, nil
}

func prepared(ctx context.Context, conn *pgx.Conn) (any, error) {
	sd, err := conn.Prepare(ctx, "customer_name", "select name from shop.customers where id = $1")
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for round := 0; round < 2; round++ {
		for _, id := range []int{1, 2, 3, 500, 1000} {
			var name string
			if err := conn.QueryRow(ctx, sd.Name, id).Scan(&name); err != nil {
				return nil, fmt.Errorf("id %d: %w", id, err)
			}
			if name == "" {
				return nil, fmt.Errorf("empty name for id %d", id)
			}
			if round == 1 && names[id] != name {
				return nil, fmt.Errorf("different name on re-execution for id %d", id)
			}
			names[id] = name
		}
	}
	var matches int64
	if err := conn.QueryRow(ctx, "select count(*) from shop.customers where name = $1", names[1]).Scan(&matches); err != nil {
		return nil, err
	}
	if matches < 1 {
		return nil, errors.New("the text parameter matched no rows")
	}
	if err := conn.Deallocate(ctx, sd.Name); err != nil {
		return nil, err
	}
	return map[string]any{"names": len(names), "text_param_matches": matches}, nil
}

func binaryResults(ctx context.Context, conn *pgx.Conn) (any, error) {
	const q = "select count(*)::int8, sum(amount), max(created_at), min(id)::int4 from shop.orders where id <= $1"
	rows, err := conn.Query(ctx, q, 4000)
	if err != nil {
		return nil, err
	}
	var formats []int16
	for _, fd := range rows.FieldDescriptions() {
		formats = append(formats, fd.Format)
	}
	var (
		bCount int64
		bSum   pgtype.Numeric
		bMax   time.Time
		bMin   int32
	)
	if !rows.Next() {
		rows.Close()
		return nil, fmt.Errorf("no row: %v", rows.Err())
	}
	if err := rows.Scan(&bCount, &bSum, &bMax, &bMin); err != nil {
		rows.Close()
		return nil, err
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i, f := range formats {
		if f != pgx.BinaryFormatCode {
			return nil, fmt.Errorf("column %d came back in format %d, not binary", i, f)
		}
	}
	var (
		tCount int64
		tSum   pgtype.Numeric
		tMax   time.Time
		tMin   int32
	)
	if err := conn.QueryRow(ctx, strings.Replace(q, "$1", "4000", 1), pgx.QueryExecModeSimpleProtocol).Scan(&tCount, &tSum, &tMax, &tMin); err != nil {
		return nil, err
	}
	bs, _ := bSum.Value()
	ts, _ := tSum.Value()
	if bCount != tCount || fmt.Sprint(bs) != fmt.Sprint(ts) || !bMax.Equal(tMax) || bMin != tMin {
		return nil, fmt.Errorf("binary %v/%v/%v/%v differs from text %v/%v/%v/%v", bCount, bs, bMax, bMin, tCount, ts, tMax, tMin)
	}
	if bCount != 4000 {
		return nil, fmt.Errorf("expected 4000 orders, got %d", bCount)
	}
	return map[string]any{"count": bCount, "sum": fmt.Sprint(bs), "max_created_at": bMax.UTC().Format(time.RFC3339Nano), "formats": formats}, nil
}

func transaction(ctx context.Context, conn *pgx.Conn) (any, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, "create temp table pgward_pgx_tx (id int, note text)"); err != nil {
		return nil, err
	}
	for i := 0; i < 10; i++ {
		if _, err := tx.Exec(ctx, "insert into pgward_pgx_tx values ($1, $2)", i, fmt.Sprintf("row %d", i)); err != nil {
			return nil, err
		}
	}
	var n int64
	if err := tx.QueryRow(ctx, "select count(*) from pgward_pgx_tx").Scan(&n); err != nil {
		return nil, err
	}
	if n != 10 {
		return nil, fmt.Errorf("expected 10 rows inside the transaction, got %d", n)
	}
	if err := tx.Rollback(ctx); err != nil {
		return nil, err
	}
	var gone bool
	if err := conn.QueryRow(ctx, "select to_regclass('pg_temp.pgward_pgx_tx') is null").Scan(&gone); err != nil {
		return nil, err
	}
	if !gone {
		return nil, errors.New("the temp table survived the rollback")
	}
	return map[string]any{"rolled_back": true}, nil
}

func copyOut(ctx context.Context, conn *pgx.Conn) (any, error) {
	var buf bytes.Buffer
	tag, err := conn.PgConn().CopyTo(ctx, &buf, "COPY shop.orders TO STDOUT")
	if err != nil {
		return nil, err
	}
	lines := int64(bytes.Count(buf.Bytes(), []byte("\n")))
	var expected int64
	if err := conn.QueryRow(ctx, "select count(*) from shop.orders").Scan(&expected); err != nil {
		return nil, err
	}
	if lines != expected || tag.RowsAffected() != expected || expected < 5000 {
		return nil, fmt.Errorf("COPY TO gave %d lines (tag %q), table has %d", lines, tag.String(), expected)
	}
	return map[string]any{"lines": lines, "bytes": buf.Len()}, nil
}

func copyIn(ctx context.Context, conn *pgx.Conn) (any, error) {
	if _, err := conn.Exec(ctx, "create temp table pgward_pgx_copy (id int, amount numeric(10,2), note text, at timestamptz)"); err != nil {
		return nil, err
	}
	defer conn.Exec(ctx, "drop table if exists pgward_pgx_copy") //nolint:errcheck
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	rows := make([][]any, 0, 2000)
	for i := 1; i <= 2000; i++ {
		var amount pgtype.Numeric
		if err := amount.Scan(fmt.Sprintf("%d.25", i)); err != nil {
			return nil, err
		}
		rows = append(rows, []any{int32(i), amount, fmt.Sprintf("note %d", i), base.Add(time.Duration(i) * time.Minute)})
	}
	// CopyFrom speaks COPY ... FROM STDIN (FORMAT binary).
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"pgward_pgx_copy"}, []string{"id", "amount", "note", "at"}, pgx.CopyFromRows(rows))
	if err != nil {
		return nil, err
	}
	// And the text format through the raw connection.
	var text strings.Builder
	for i := 2001; i <= 2500; i++ {
		fmt.Fprintf(&text, "%d\t%d.25\tnote %d\t2024-01-01 00:00:00+00\n", i, i, i)
	}
	tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(text.String()), "COPY pgward_pgx_copy FROM STDIN")
	if err != nil {
		return nil, err
	}
	var count int64
	var sum string
	if err := conn.QueryRow(ctx, "select count(*), sum(amount)::text from pgward_pgx_copy").Scan(&count, &sum); err != nil {
		return nil, err
	}
	if n != 2000 || tag.RowsAffected() != 500 || count != 2500 || sum != "3126875.00" {
		return nil, fmt.Errorf("binary COPY %d rows, text COPY %d rows, table has %d (sum %s)", n, tag.RowsAffected(), count, sum)
	}
	return map[string]any{"binary_rows": n, "text_rows": tag.RowsAffected()}, nil
}

func cancelCheck(ctx context.Context, conn *pgx.Conn) (any, error) {
	started := time.Now()
	qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := conn.Exec(qctx, "select pg_sleep(30)")
	cancel()
	secs := time.Since(started).Seconds()
	if err == nil {
		return nil, errors.New("pg_sleep(30) was not cancelled")
	}
	if code := sqlstate(err); code != "57014" {
		return nil, fmt.Errorf("expected SQLSTATE 57014, got %q (%v) after %.2f s", code, err, secs)
	}
	if secs > 10 {
		return nil, fmt.Errorf("the cancel took %.1f s", secs)
	}
	var v int
	if err := conn.QueryRow(ctx, "select 42").Scan(&v); err != nil || v != 42 {
		return nil, fmt.Errorf("the session is unusable after the cancel: %v", err)
	}
	return map[string]any{"sqlstate": "57014", "seconds": float64(int(secs*1000)) / 1000}, nil
}

func errorRecovery(ctx context.Context, conn *pgx.Conn) (any, error) {
	var v int
	err := conn.QueryRow(ctx, "select 1/0").Scan(&v)
	if code := sqlstate(err); code != "22012" {
		return nil, fmt.Errorf("expected SQLSTATE 22012, got %q (%v)", code, err)
	}
	// The same error in the simple protocol, then success in both.
	_, err = conn.Exec(ctx, "select 1/0", pgx.QueryExecModeSimpleProtocol)
	if code := sqlstate(err); code != "22012" {
		return nil, fmt.Errorf("simple protocol: expected SQLSTATE 22012, got %q (%v)", code, err)
	}
	if err := conn.QueryRow(ctx, "select $1::int + 1", 41).Scan(&v); err != nil || v != 42 {
		return nil, fmt.Errorf("wrong answer after the error: %d, %v", v, err)
	}
	return map[string]any{"sqlstate": "22012", "then": v}, nil
}
