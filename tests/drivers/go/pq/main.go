// Command pq runs the canonical driver scenarios with lib/pq through database/sql (Debian's packaged
// source): dedicated *sql.Conn per client, named statements from Prepare, pq.CopyIn, pq.Listener and
// context cancellation (lib/pq's cancel API). One JSON line per scenario.
package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"drivertests/common"

	"github.com/lib/pq"
)

const name = "lib/pq"

var p = common.FromEnv()
var bg = context.Background()

func open(user, password string) *sql.DB {
	db, err := sql.Open("postgres", p.URL(user, password))
	common.Must(err)
	return db
}

// conn is one dedicated server session (database/sql would otherwise spread statements over its pool).
func conn(db *sql.DB) *sql.Conn {
	c, err := db.Conn(bg)
	common.Must(err)
	return c
}

func scalarInt(q interface {
	QueryRowContext(context.Context, string, ...interface{}) *sql.Row
}, query string, args ...interface{}) int {
	var v int
	common.Must(q.QueryRowContext(bg, query, args...).Scan(&v))
	return v
}

func exec(c *sql.Conn, query string, args ...interface{}) {
	_, err := c.ExecContext(bg, query, args...)
	common.Must(err)
}

func table(c *sql.Conn, cols string) string {
	t := common.Unique("t")
	exec(c, fmt.Sprintf("CREATE TABLE %s (%s)", t, cols))
	return t
}

func login(user, password string) string {
	db := open(user, password)
	var got string
	common.Must(db.QueryRow("SELECT current_user").Scan(&got))
	db.Close()
	common.Check(got == user, "current_user is %q, expected %q", got, user)
	bad := open(user, password+"-wrong")
	defer bad.Close()
	err := bad.Ping()
	common.Check(err != nil, "login with a wrong password succeeded")
	msg := strings.ToLower(err.Error())
	common.Check(strings.Contains(msg, "password") || strings.Contains(msg, "auth"), "unexpected login error: %v", err)
	return "wrong password refused"
}

func scenarios() map[string]common.Scenario {
	return map[string]common.Scenario{
		"login_scram": func() string { return login(p.User, p.Password) },
		"login_md5":   func() string { return login(p.MD5User, p.MD5Password) },

		"simple_query": func() string {
			db := open("", "")
			defer db.Close()
			// Without arguments lib/pq sends a simple Query; it returns the first result set.
			rows, err := db.Query("SELECT 'x' || 'y'; SELECT 2")
			common.Must(err)
			var first []string
			for rows.Next() {
				var s string
				common.Must(rows.Scan(&s))
				first = append(first, s)
			}
			common.Must(rows.Err())
			common.Check(len(first) == 1 && first[0] == "xy", "first result %v", first)
			common.Check(rows.NextResultSet(), "second result set missing")
			common.Check(rows.Next(), "second result set empty")
			var two int
			common.Must(rows.Scan(&two))
			common.Check(two == 2, "second result %d", two)
			rows.Close()
			return ""
		},

		"param_query": func() string {
			db := open("", "")
			defer db.Close()
			var (
				i  int
				s  string
				n  sql.NullString
				b  bool
				nm string
				by []byte
			)
			in := "héllo 'quoted' \\ \""
			bin := []byte{0, 1, 255, '\''}
			common.Must(db.QueryRow("SELECT $1::int, $2::text, $3::text, $4::bool, $5::numeric, $6::bytea",
				42, in, nil, true, "12.345", bin).Scan(&i, &s, &n, &b, &nm, &by))
			common.Check(i == 42 && s == in && !n.Valid && b && nm == "12.345" && bytes.Equal(by, bin),
				"round trip %v %q %v %v %q %v", i, s, n, b, nm, by)
			return ""
		},

		"prepared_reuse": func() string {
			db := open("", "")
			defer db.Close()
			db.SetMaxOpenConns(p.Clients)
			db.SetMaxIdleConns(0) // session mode: hand servers back as soon as a client is done
			common.RunClients(p.Clients, func(cid int) {
				c := conn(db)
				defer c.Close()
				stmt, err := c.PrepareContext(bg, "SELECT $1::int * 2 + $2::int, $3::text")
				common.Must(err)
				defer stmt.Close()
				for j := 0; j < common.PreparedReuses; j++ {
					tx, err := c.BeginTx(bg, nil)
					common.Must(err)
					var a int
					var b string
					common.Must(tx.StmtContext(bg, stmt).QueryRowContext(bg, cid, j, fmt.Sprintf("c%d", cid)).Scan(&a, &b))
					common.Must(tx.Commit())
					common.Check(a == cid*2+j && b == fmt.Sprintf("c%d", cid), "client %d got %d %q at %d", cid, a, b, j)
				}
			})
			return fmt.Sprintf("%d clients x %d transactions, named statement from Prepare", p.Clients, common.PreparedReuses)
		},

		"transaction": func() string {
			db := open("", "")
			defer db.Close()
			c := conn(db)
			defer c.Close()
			t := table(c, "k int, v text")
			defer exec(c, "DROP TABLE "+t)
			tx, err := c.BeginTx(bg, nil)
			common.Must(err)
			_, err = tx.Exec(fmt.Sprintf("INSERT INTO %s VALUES ($1, 'committed')", t), 1)
			common.Must(err)
			common.Must(tx.Commit())
			tx, err = c.BeginTx(bg, nil)
			common.Must(err)
			_, err = tx.Exec(fmt.Sprintf("INSERT INTO %s VALUES ($1, 'rolled back')", t), 2)
			common.Must(err)
			common.Must(tx.Rollback())
			other := conn(db)
			defer other.Close()
			common.Check(scalarInt(other, fmt.Sprintf("SELECT count(*) FROM %s", t)) == 1, "row count after commit+rollback")
			common.Check(scalarInt(other, fmt.Sprintf("SELECT max(k) FROM %s", t)) == 1, "committed row")
			return ""
		},

		"error_recovery": func() string {
			db := open("", "")
			defer db.Close()
			c := conn(db)
			defer c.Close()
			t := table(c, "k int, v text")
			defer exec(c, "DROP TABLE "+t)
			_, err := c.ExecContext(bg, "SELECT 1/0")
			common.ExpectState(err, "22012")
			var x int
			common.ExpectState(c.QueryRowContext(bg, "SELECT $1::int / 0", 1).Scan(&x), "22012")
			common.Check(scalarInt(c, "SELECT 2") == 2, "query after error")
			tx, err := c.BeginTx(bg, nil)
			common.Must(err)
			_, err = tx.Exec(fmt.Sprintf("INSERT INTO %s VALUES (1, 'x')", t))
			common.Must(err)
			common.ExpectState(tx.QueryRow("SELECT $1::int / 0", 1).Scan(&x), "22012")
			_, err = tx.Exec("SELECT 1")
			common.ExpectState(err, "25P02")
			common.Must(tx.Rollback())
			common.Check(scalarInt(c, "SELECT 3") == 3, "query after rollback")
			n := scalarInt(c, fmt.Sprintf("SELECT count(*) FROM %s", t))
			common.Check(n == 0, "rolled-back insert visible (%d rows)", n)
			return ""
		},

		"copy_in": func() string {
			db := open("", "")
			defer db.Close()
			c := conn(db)
			defer c.Close()
			t := table(c, "k int, v text")
			defer exec(c, "DROP TABLE "+t)
			rows := common.CopyRows()
			tx, err := c.BeginTx(bg, nil)
			common.Must(err)
			stmt, err := tx.Prepare(pq.CopyIn(t, "k", "v"))
			common.Must(err)
			for _, r := range rows {
				_, err = stmt.Exec(r.K, r.V)
				common.Must(err)
			}
			_, err = stmt.Exec()
			common.Must(err)
			common.Must(stmt.Close())
			common.Must(tx.Commit())
			var cnt, sum int
			common.Must(c.QueryRowContext(bg, fmt.Sprintf("SELECT count(*), sum(k) FROM %s", t)).Scan(&cnt, &sum))
			common.Check(cnt == common.RowsCopy && sum == common.RowsCopy*(common.RowsCopy-1)/2, "count/sum %d %d", cnt, sum)
			var v string
			common.Must(c.QueryRowContext(bg, fmt.Sprintf("SELECT v FROM %s WHERE k = 1000", t)).Scan(&v))
			common.Check(v == rows[1000].V, "escaped value %q", v)
			return "pq.CopyIn"
		},

		"copy_out": func() string {
			panic(common.NotApplicable{Reason: "lib/pq supports only COPY FROM STDIN (pq.CopyIn), not COPY TO STDOUT"})
		},

		"large_result": func() string {
			db := open("", "")
			defer db.Close()
			rows, err := db.Query(fmt.Sprintf("SELECT g, md5(g::text) FROM generate_series(1, %d) g", common.RowsLarge))
			common.Must(err)
			defer rows.Close()
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
			db := open("", "")
			defer db.Close()
			data := common.ByteaPayload()
			var n int
			var h string
			var back []byte
			common.Must(db.QueryRow("SELECT length(x), md5(x), x FROM (SELECT $1::bytea AS x) s", data).Scan(&n, &h, &back))
			common.Check(n == len(data) && h == common.MD5Hex(data), "server saw length %d md5 %s", n, h)
			common.Check(bytes.Equal(back, data), "bytes read back differ")
			return ""
		},

		"listen_notify": func() string {
			channel := common.Unique("ch")
			// pq.Listener reports connection-level trouble only through its event callback and keeps
			// retrying, so a refused LISTEN surfaces there, not as Listen's return value.
			events := make(chan error, 16)
			l := pq.NewListener(p.URL("", ""), 100*time.Millisecond, time.Second, func(_ pq.ListenerEventType, err error) {
				if err != nil {
					select {
					case events <- err:
					default:
					}
				}
			})
			// Close can block while the listener retries; never let it hold up the scenario.
			defer func() { go l.Close() }()
			listened := make(chan error, 1)
			go func() { listened <- l.Listen(channel) }()
			select {
			case err := <-listened:
				if err != nil {
					if p.Mode == "transaction" && common.ListenRefused(err) {
						panic(common.NotApplicable{Reason: common.ListenTxnNA + common.Describe(err)})
					}
					panic(err)
				}
			case err := <-events:
				if p.Mode == "transaction" && common.ListenRefused(err) {
					panic(common.NotApplicable{Reason: common.ListenTxnNA + common.Describe(err)})
				}
				panic(err)
			case <-time.After(5 * time.Second):
				panic(fmt.Errorf("LISTEN did not complete within 5s"))
			}
			db := open("", "")
			defer db.Close()
			_, err := db.Exec("SELECT pg_notify($1, $2)", channel, "payload-1")
			common.Must(err)
			select {
			case n := <-l.Notify:
				common.Check(n != nil && n.Channel == channel && n.Extra == "payload-1", "notification %+v", n)
			case <-time.After(5 * time.Second):
				if p.Mode == "transaction" {
					panic(fmt.Errorf(common.ListenTxnSilent))
				}
				panic(fmt.Errorf("no notification within 5s"))
			}
			return "pq.Listener"
		},

		"cancel": func() string {
			marker := common.Unique("cancel")
			db := open("", "")
			defer db.Close()
			monitor := conn(db)
			defer monitor.Close()
			c := conn(db)
			ctx, cancel := context.WithCancel(bg)
			done := make(chan error, 1)
			go func() {
				_, err := c.ExecContext(ctx, fmt.Sprintf("SELECT pg_sleep(10) /* %s */", marker))
				done <- err
			}()
			probe := "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1"
			deadline := time.Now().Add(5 * time.Second)
			for scalarInt(monitor, probe, "%"+marker+" */") == 0 {
				common.Check(time.Now().Before(deadline), "pg_sleep never showed up in pg_stat_activity")
				time.Sleep(20 * time.Millisecond)
			}
			t0 := time.Now()
			cancel() // lib/pq sends a CancelRequest, then discards the connection
			select {
			case err := <-done:
				common.Check(err != nil, "pg_sleep finished without error")
			case <-time.After(5 * time.Second):
				panic(fmt.Errorf("query still running 5s after cancel"))
			}
			c.Close()
			// The connection is closed by lib/pq either way: prove the server query itself stopped.
			for scalarInt(monitor, probe, "%"+marker+" */") != 0 {
				common.Check(time.Since(t0) < 5*time.Second, "pg_sleep still running on the server 5s after cancel")
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(t0).Seconds()
			common.Check(scalarInt(db, "SELECT 7") == 7, "pool unusable after cancel")
			return fmt.Sprintf("cancelled after %.2fs (context cancel)", took)
		},

		"statement_timeout": func() string {
			db := open("", "")
			defer db.Close()
			c := conn(db)
			defer c.Close()
			t0 := time.Now()
			tx, err := c.BeginTx(bg, nil)
			common.Must(err)
			_, err = tx.Exec("SET LOCAL statement_timeout = '100ms'")
			common.Must(err)
			_, err = tx.Exec("SELECT pg_sleep(5)")
			common.ExpectState(err, "57014")
			common.Must(tx.Rollback())
			common.Check(time.Since(t0) < 3*time.Second, "statement_timeout took too long")
			common.Check(scalarInt(c, "SELECT 8") == 8, "connection unusable after timeout")
			var st string
			common.Must(c.QueryRowContext(bg, "SHOW statement_timeout").Scan(&st))
			common.Check(st == "0", "SET LOCAL leaked: statement_timeout=%s", st)
			return ""
		},

		"batch": func() string {
			panic(common.NotApplicable{Reason: "lib/pq has no batch or pipeline API"})
		},

		"pool_churn": func() string {
			// database/sql with no idle connections: every query opens a connection and closes it after.
			db := open("", "")
			defer db.Close()
			db.SetMaxIdleConns(0)
			for i := 0; i < p.Churn; i++ {
				got := scalarInt(db, "SELECT $1::int", i)
				common.Check(got == i, "cycle %d got %d", i, got)
			}
			st := db.Stats()
			common.Check(st.MaxIdleClosed >= int64(p.Churn-1), "connections were reused (%d closed)", st.MaxIdleClosed)
			return fmt.Sprintf("%d connections (database/sql, MaxIdleConns=0)", p.Churn)
		},

		"concurrent_clients": func() string {
			db := open("", "")
			defer db.Close()
			db.SetMaxIdleConns(0)
			admin := conn(db)
			t := table(admin, "cid int, i int, v text")
			admin.Close()
			defer db.Exec("DROP TABLE " + t)
			common.RunClients(p.Clients, func(cid int) {
				c := conn(db)
				defer c.Close()
				for i := 0; i < common.TxnsPerClient; i++ {
					tx, err := c.BeginTx(bg, nil)
					common.Must(err)
					_, err = tx.Exec(fmt.Sprintf("INSERT INTO %s VALUES ($1, $2, $3)", t), cid, i, fmt.Sprintf("c%d-%d", cid, i))
					common.Must(err)
					var got int
					common.Must(tx.QueryRow("SELECT $1::int * 1000 + $2::int", cid, i).Scan(&got))
					common.Check(got == cid*1000+i, "client %d got %d at %d", cid, got, i)
					common.Must(tx.Commit())
				}
				rows, err := c.QueryContext(bg, fmt.Sprintf("SELECT i, v FROM %s WHERE cid = $1 ORDER BY i", t), cid)
				common.Must(err)
				defer rows.Close()
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
	common.EmitVersion(name, "lib/pq (Debian golang-github-lib-pq-dev), "+common.GoVersion())
	common.Run(name, p, scenarios())
}
