// Command pgx runs the canonical driver scenarios with jackc/pgx v4 (Debian's packaged source): the
// default statement cache (every parameterised query is a named prepared statement), Batch,
// CopyFrom, CopyTo, CancelRequest and WaitForNotification. One JSON line per scenario.
package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"drivertests/common"

	"github.com/jackc/pgx/v4"
)

const name = "pgx-v4"

var p = common.FromEnv()
var bg = context.Background()

func connect(user, password string) *pgx.Conn {
	conn, err := pgx.Connect(bg, p.URL(user, password))
	common.Must(err)
	return conn
}

func table(conn *pgx.Conn, cols string) string {
	t := common.Unique("t")
	_, err := conn.Exec(bg, fmt.Sprintf("CREATE TABLE %s (%s)", t, cols))
	common.Must(err)
	return t
}

func drop(conn *pgx.Conn, t string) {
	_, _ = conn.Exec(bg, "DROP TABLE "+t)
}

func scalarInt(conn *pgx.Conn, sql string, args ...interface{}) int {
	var v int
	common.Must(conn.QueryRow(bg, sql, args...).Scan(&v))
	return v
}

func login(user, password string) string {
	conn := connect(user, password)
	var got string
	common.Must(conn.QueryRow(bg, "SELECT current_user").Scan(&got))
	conn.Close(bg)
	common.Check(got == user, "current_user is %q, expected %q", got, user)
	bad, err := pgx.Connect(bg, p.URL(user, password+"-wrong"))
	if err == nil {
		bad.Close(bg)
		panic(fmt.Errorf("login with a wrong password succeeded"))
	}
	msg := strings.ToLower(err.Error())
	common.Check(strings.Contains(msg, "password") || strings.Contains(msg, "auth"), "unexpected login error: %v", err)
	return "wrong password refused"
}

func scenarios() map[string]common.Scenario {
	return map[string]common.Scenario{
		"login_scram": func() string { return login(p.User, p.Password) },
		"login_md5":   func() string { return login(p.MD5User, p.MD5Password) },

		"simple_query": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			res, err := conn.PgConn().Exec(bg, "SELECT 1 AS a; SELECT 'x' || 'y' AS b").ReadAll()
			common.Must(err)
			common.Check(len(res) == 2 && string(res[0].Rows[0][0]) == "1" && string(res[1].Rows[0][0]) == "xy",
				"unexpected results")
			return "PgConn.Exec (simple protocol)"
		},

		"param_query": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			var (
				i  int32
				s  string
				n  *string
				b  bool
				nm string
				by []byte
			)
			in := "héllo 'quoted' \\ \""
			bin := []byte{0, 1, 255, '\''}
			common.Must(conn.QueryRow(bg, "SELECT $1::int, $2::text, $3::text, $4::bool, $5::numeric::text, $6::bytea",
				42, in, nil, true, "12.345", bin).Scan(&i, &s, &n, &b, &nm, &by))
			common.Check(i == 42 && s == in && n == nil && b && nm == "12.345" && bytes.Equal(by, bin),
				"round trip %v %q %v %v %q %v", i, s, n, b, nm, by)
			return ""
		},

		"prepared_reuse": func() string {
			common.RunClients(p.Clients, func(cid int) {
				conn := connect("", "")
				defer conn.Close(bg)
				_, err := conn.Prepare(bg, "reuse", "SELECT $1::int * 2 + $2::int, $3::text")
				common.Must(err)
				for j := 0; j < common.PreparedReuses; j++ {
					tx, err := conn.Begin(bg)
					common.Must(err)
					var a int
					var b string
					common.Must(tx.QueryRow(bg, "reuse", cid, j, fmt.Sprintf("c%d", cid)).Scan(&a, &b))
					common.Must(tx.Commit(bg))
					common.Check(a == cid*2+j && b == fmt.Sprintf("c%d", cid), "client %d got %d %q at %d", cid, a, b, j)
				}
			})
			return fmt.Sprintf("%d clients x %d transactions, Conn.Prepare", p.Clients, common.PreparedReuses)
		},

		"transaction": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			other := connect("", "")
			defer other.Close(bg)
			t := table(conn, "k int, v text")
			defer drop(conn, t)
			common.Must(conn.BeginFunc(bg, func(tx pgx.Tx) error {
				_, err := tx.Exec(bg, fmt.Sprintf("INSERT INTO %s VALUES ($1, 'committed')", t), 1)
				return err
			}))
			tx, err := conn.Begin(bg)
			common.Must(err)
			_, err = tx.Exec(bg, fmt.Sprintf("INSERT INTO %s VALUES ($1, 'rolled back')", t), 2)
			common.Must(err)
			common.Must(tx.Rollback(bg))
			rows, err := other.Query(bg, fmt.Sprintf("SELECT k FROM %s ORDER BY k", t))
			common.Must(err)
			var ks []int
			for rows.Next() {
				var k int
				common.Must(rows.Scan(&k))
				ks = append(ks, k)
			}
			common.Must(rows.Err())
			common.Check(len(ks) == 1 && ks[0] == 1, "visible rows %v, expected [1]", ks)
			return ""
		},

		"error_recovery": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			t := table(conn, "k int, v text")
			defer drop(conn, t)
			_, err := conn.Exec(bg, "SELECT 1/0")
			common.ExpectState(err, "22012")
			var x int
			common.ExpectState(conn.QueryRow(bg, "SELECT $1::int / 0", 1).Scan(&x), "22012")
			common.Check(scalarInt(conn, "SELECT 2") == 2, "query after error")
			tx, err := conn.Begin(bg)
			common.Must(err)
			_, err = tx.Exec(bg, fmt.Sprintf("INSERT INTO %s VALUES (1, 'x')", t))
			common.Must(err)
			common.ExpectState(tx.QueryRow(bg, "SELECT $1::int / 0", 1).Scan(&x), "22012")
			_, err = tx.Exec(bg, "SELECT 1")
			common.ExpectState(err, "25P02")
			common.Must(tx.Rollback(bg))
			common.Check(scalarInt(conn, "SELECT 3") == 3, "query after rollback")
			n := scalarInt(conn, fmt.Sprintf("SELECT count(*) FROM %s", t))
			common.Check(n == 0, "rolled-back insert visible (%d rows)", n)
			return ""
		},

		"copy_in": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			t := table(conn, "k int, v text")
			defer drop(conn, t)
			rows := common.CopyRows()
			src := make([][]interface{}, len(rows))
			for i, r := range rows {
				src[i] = []interface{}{r.K, r.V}
			}
			n, err := conn.CopyFrom(bg, pgx.Identifier{t}, []string{"k", "v"}, pgx.CopyFromRows(src))
			common.Must(err)
			common.Check(n == common.RowsCopy, "CopyFrom reported %d rows", n)
			var cnt, sum int
			common.Must(conn.QueryRow(bg, fmt.Sprintf("SELECT count(*), sum(k) FROM %s", t)).Scan(&cnt, &sum))
			common.Check(cnt == common.RowsCopy && sum == common.RowsCopy*(common.RowsCopy-1)/2, "count/sum %d %d", cnt, sum)
			var v string
			common.Must(conn.QueryRow(bg, fmt.Sprintf("SELECT v FROM %s WHERE k = 1000", t)).Scan(&v))
			common.Check(v == rows[1000].V, "escaped value %q", v)
			return "CopyFrom (binary COPY)"
		},

		"copy_out": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			var buf bytes.Buffer
			_, err := conn.PgConn().CopyTo(bg, &buf,
				fmt.Sprintf("COPY (SELECT g, 'v' || g FROM generate_series(1, %d) g) TO STDOUT", common.RowsCopy))
			common.Must(err)
			var want strings.Builder
			for i := 1; i <= common.RowsCopy; i++ {
				fmt.Fprintf(&want, "%d\tv%d\n", i, i)
			}
			common.Check(buf.String() == want.String(), "copy out mismatch (%d bytes)", buf.Len())
			return "PgConn.CopyTo"
		},

		"large_result": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			rows, err := conn.Query(bg, fmt.Sprintf("SELECT g, md5(g::text) FROM generate_series(1, %d) g", common.RowsLarge))
			common.Must(err)
			i := 0
			for rows.Next() {
				i++
				var g int
				var h string
				common.Must(rows.Scan(&g, &h))
				if g != i || h != common.MD5Hex([]byte(fmt.Sprint(i))) {
					panic(fmt.Errorf("row %d is %d %s", i, g, h))
				}
			}
			common.Must(rows.Err())
			common.Check(i == common.RowsLarge, "%d rows", i)
			return ""
		},

		"large_bytea": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			data := common.ByteaPayload()
			var n int
			var h string
			var back []byte
			common.Must(conn.QueryRow(bg, "SELECT length(x), md5(x), x FROM (SELECT $1::bytea AS x) s", data).Scan(&n, &h, &back))
			common.Check(n == len(data) && h == common.MD5Hex(data), "server saw length %d md5 %s", n, h)
			common.Check(bytes.Equal(back, data), "bytes read back differ")
			return ""
		},

		"listen_notify": func() string {
			channel := common.Unique("ch")
			listener := connect("", "")
			defer listener.Close(bg)
			sender := connect("", "")
			defer sender.Close(bg)
			if _, err := listener.Exec(bg, "LISTEN "+channel); err != nil {
				if p.Mode == "transaction" && common.ListenRefused(err) {
					panic(common.NotApplicable{Reason: common.ListenTxnNA + common.Describe(err)})
				}
				panic(err)
			}
			_, err := sender.Exec(bg, "SELECT pg_notify($1, $2)", channel, "payload-1")
			common.Must(err)
			ctx, cancel := context.WithTimeout(bg, 5*time.Second)
			defer cancel()
			n, err := listener.WaitForNotification(ctx)
			if err != nil && p.Mode == "transaction" {
				panic(fmt.Errorf(common.ListenTxnSilent))
			}
			common.Must(err)
			common.Check(n.Channel == channel && n.Payload == "payload-1", "notification %+v", n)
			return "notification received"
		},

		"cancel": func() string {
			marker := common.Unique("cancel")
			conn := connect("", "")
			defer conn.Close(bg)
			monitor := connect("", "")
			defer monitor.Close(bg)
			done := make(chan error, 1)
			go func() {
				_, err := conn.Exec(bg, fmt.Sprintf("SELECT pg_sleep(10) /* %s */", marker))
				done <- err
			}()
			deadline := time.Now().Add(5 * time.Second)
			probe := "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1"
			for scalarInt(monitor, probe, "%"+marker+" */") == 0 {
				common.Check(time.Now().Before(deadline), "pg_sleep never showed up in pg_stat_activity")
				time.Sleep(20 * time.Millisecond)
			}
			t0 := time.Now()
			common.Must(conn.PgConn().CancelRequest(bg))
			select {
			case err := <-done:
				common.ExpectState(err, "57014")
			case <-time.After(5 * time.Second):
				panic(fmt.Errorf("query still running 5s after cancel"))
			}
			took := time.Since(t0).Seconds()
			common.Check(scalarInt(conn, "SELECT 7") == 7, "connection unusable after cancel")
			return fmt.Sprintf("cancelled after %.2fs (PgConn.CancelRequest)", took)
		},

		"statement_timeout": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			t0 := time.Now()
			tx, err := conn.Begin(bg)
			common.Must(err)
			_, err = tx.Exec(bg, "SET LOCAL statement_timeout = '100ms'")
			common.Must(err)
			_, err = tx.Exec(bg, "SELECT pg_sleep(5)")
			common.ExpectState(err, "57014")
			common.Must(tx.Rollback(bg))
			common.Check(time.Since(t0) < 3*time.Second, "statement_timeout took too long")
			common.Check(scalarInt(conn, "SELECT 8") == 8, "connection unusable after timeout")
			var st string
			common.Must(conn.QueryRow(bg, "SHOW statement_timeout").Scan(&st))
			common.Check(st == "0", "SET LOCAL leaked: statement_timeout=%s", st)
			return ""
		},

		"batch": func() string {
			conn := connect("", "")
			defer conn.Close(bg)
			t := table(conn, "k int, v text")
			defer drop(conn, t)
			b := &pgx.Batch{}
			for i := 0; i < common.BatchSize; i++ {
				b.Queue(fmt.Sprintf("INSERT INTO %s VALUES ($1, $2)", t), i, fmt.Sprintf("p%d", i))
			}
			br := conn.SendBatch(bg, b)
			for i := 0; i < common.BatchSize; i++ {
				_, err := br.Exec()
				common.Must(err)
			}
			common.Must(br.Close())
			var cnt, sum int
			common.Must(conn.QueryRow(bg, fmt.Sprintf("SELECT count(*), sum(k) FROM %s", t)).Scan(&cnt, &sum))
			common.Check(cnt == common.BatchSize && sum == common.BatchSize*(common.BatchSize-1)/2, "count/sum %d %d", cnt, sum)
			b = &pgx.Batch{}
			b.Queue(fmt.Sprintf("INSERT INTO %s VALUES (-1, 'a')", t))
			b.Queue("SELECT $1::int / 0", 1)
			b.Queue(fmt.Sprintf("INSERT INTO %s VALUES (-3, 'c')", t))
			br = conn.SendBatch(bg, b)
			var batchErr error
			for i := 0; i < 3; i++ {
				if _, err := br.Exec(); err != nil && batchErr == nil {
					batchErr = err
				}
			}
			_ = br.Close()
			common.ExpectState(batchErr, "22012")
			common.Check(scalarInt(conn, "SELECT 9") == 9, "connection unusable after failed batch")
			n := scalarInt(conn, fmt.Sprintf("SELECT count(*) FROM %s WHERE k < 0", t))
			common.Check(n == 0, "failed batch (one implicit transaction) left %d rows", n)
			return "SendBatch"
		},

		"pool_churn": func() string {
			for i := 0; i < p.Churn; i++ {
				conn := connect("", "")
				got := scalarInt(conn, "SELECT $1::int", i)
				conn.Close(bg)
				common.Check(got == i, "cycle %d got %d", i, got)
			}
			return fmt.Sprintf("%d connections", p.Churn)
		},

		"concurrent_clients": func() string {
			admin := connect("", "")
			t := table(admin, "cid int, i int, v text")
			admin.Close(bg)
			defer func() {
				c := connect("", "")
				drop(c, t)
				c.Close(bg)
			}()
			common.RunClients(p.Clients, func(cid int) {
				conn := connect("", "")
				defer conn.Close(bg)
				for i := 0; i < common.TxnsPerClient; i++ {
					common.Must(conn.BeginFunc(bg, func(tx pgx.Tx) error {
						if _, err := tx.Exec(bg, fmt.Sprintf("INSERT INTO %s VALUES ($1, $2, $3)", t), cid, i, fmt.Sprintf("c%d-%d", cid, i)); err != nil {
							return err
						}
						var got int
						if err := tx.QueryRow(bg, "SELECT $1::int * 1000 + $2::int", cid, i).Scan(&got); err != nil {
							return err
						}
						common.Check(got == cid*1000+i, "client %d got %d at %d", cid, got, i)
						return nil
					}))
				}
				rows, err := conn.Query(bg, fmt.Sprintf("SELECT i, v FROM %s WHERE cid = $1 ORDER BY i", t), cid)
				common.Must(err)
				k := 0
				for rows.Next() {
					var i int
					var v string
					common.Must(rows.Scan(&i, &v))
					common.Check(i == k && v == fmt.Sprintf("c%d-%d", cid, k), "client %d row %d is %d %q", cid, k, i, v)
					k++
				}
				common.Must(rows.Err())
				common.Check(k == common.TxnsPerClient, "client %d has %d rows", cid, k)
			})
			return fmt.Sprintf("%d clients", p.Clients)
		},
	}
}

func main() {
	common.EmitVersion(name, "pgx v4 (Debian golang-github-jackc-pgx-v4-dev), "+common.GoVersion())
	common.Run(name, p, scenarios())
}
