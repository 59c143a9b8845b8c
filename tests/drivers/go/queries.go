package main

// Data-driven queries for the masking tests: PGWARD_QUERIES names a file of lines
// "check<TAB>text|binary<TAB>sql". Each result is printed as one JSON object (the column formats
// and every value as a string, or the server's error); the pytest side decides what is right.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Result formats by type OID in binary mode: every type the masking tests read comes back binary
// (pgx's own preference keeps text types in text format).
var binaryFormats = pgx.QueryResultFormatsByOID{
	16: pgx.BinaryFormatCode, 19: pgx.BinaryFormatCode, 20: pgx.BinaryFormatCode, 21: pgx.BinaryFormatCode,
	23: pgx.BinaryFormatCode, 25: pgx.BinaryFormatCode, 114: pgx.BinaryFormatCode, 700: pgx.BinaryFormatCode,
	701: pgx.BinaryFormatCode, 1042: pgx.BinaryFormatCode, 1043: pgx.BinaryFormatCode, 1082: pgx.BinaryFormatCode,
	1114: pgx.BinaryFormatCode, 1184: pgx.BinaryFormatCode, 1700: pgx.BinaryFormatCode, 2950: pgx.BinaryFormatCode,
	3802: pgx.BinaryFormatCode,
}

func runQueries(ctx context.Context, conn *pgx.Conn, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		emit("queries", false, err.Error(), time.Now())
		return
	}
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		parts := strings.SplitN(line, "\t", 3)
		started := time.Now()
		if len(parts) != 3 {
			emit("queries", false, "malformed line: "+line, started)
			continue
		}
		detail, err := query(ctx, conn, parts[1] == "binary", parts[2])
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr):
			emit(parts[0], true, map[string]any{
				"sqlstate": pgErr.Code, "message": pgErr.Message, "detail": pgErr.Detail, "hint": pgErr.Hint,
			}, started)
		case err != nil:
			emit(parts[0], false, err.Error(), started)
		default:
			emit(parts[0], true, detail, started)
		}
	}
}

func query(ctx context.Context, conn *pgx.Conn, binary bool, sql string) (map[string]any, error) {
	var rows pgx.Rows
	var err error
	if binary {
		rows, err = conn.Query(ctx, sql, binaryFormats)
	} else {
		rows, err = conn.Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	}
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	formats := []int16{}
	for _, fd := range rows.FieldDescriptions() {
		formats = append(formats, fd.Format)
	}
	out := [][]any{}
	for rows.Next() {
		values, err := rows.Values()
		if err != nil {
			return nil, err
		}
		row := make([]any, len(values))
		for i, v := range values {
			row[i] = show(v)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return map[string]any{"formats": formats, "rows": out}, nil
}

// show renders a decoded value as text (nil stays null).
func show(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return x
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case fmt.Stringer:
		return x.String()
	default:
		if j, ok := v.(interface{ MarshalJSON() ([]byte, error) }); ok {
			if b, err := j.MarshalJSON(); err == nil {
				return string(b)
			}
		}
		return fmt.Sprint(v)
	}
}
