// Package common is the plumbing shared by the Go driver programs: connection parameters from the
// environment, the JSON-line result protocol, per-scenario time limits and repeated checks. It is
// built in GOPATH mode against Debian's packaged sources (no module download).
package common

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	RowsLarge      = 100000
	RowsCopy       = 10000
	ByteaSize      = 10 * 1024 * 1024
	BatchSize      = 500
	TxnsPerClient  = 10
	PreparedReuses = 20
)

const ListenTxnNA = "impossible by design in transaction mode; the pooler refused LISTEN: "
const ListenTxnSilent = "LISTEN was accepted silently in transaction mode and the notification was lost; " +
	"the pooler must refuse LISTEN with a clear error"

// ListenRefused: a pooler's refusal of LISTEN must say so, with SQLSTATE 0A000 or a message naming
// LISTEN; any other error on LISTEN (say, a prepared-statement bug) is a plain failure.
func ListenRefused(err error) bool {
	return err != nil && (StateOf(err) == "0A000" || strings.Contains(strings.ToLower(err.Error()), "listen"))
}

type Params struct {
	Host, DB, User, Password, MD5User, MD5Password, Mode string
	Port, Clients, Churn                                 int
	Timeout                                              time.Duration
	Only                                                 map[string]bool
	SSLMode                                              string
}

func env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

func FromEnv() Params {
	secs, _ := strconv.ParseFloat(env("DRV_TIMEOUT", "60"), 64)
	only := map[string]bool{}
	for _, s := range strings.Split(env("DRV_ONLY", ""), ",") {
		if s != "" {
			only[s] = true
		}
	}
	// DRV_SSL=require (the matrix's -tls modes): TLS without certificate checks, as libpq's sslmode=require.
	sslMode := "disable"
	if env("DRV_SSL", "") == "require" {
		sslMode = "require"
	}
	return Params{
		Host: env("DRV_HOST", "127.0.0.1"), Port: atoi(env("DRV_PORT", "5432")), DB: env("DRV_DB", "app"),
		User: env("DRV_USER", "app_scram"), Password: env("DRV_PASSWORD", ""),
		MD5User: env("DRV_MD5_USER", "app_md5"), MD5Password: env("DRV_MD5_PASSWORD", ""),
		Mode: env("DRV_MODE", "direct"), Clients: atoi(env("DRV_CLIENTS", "30")),
		Churn: atoi(env("DRV_CHURN", "1000")), Timeout: time.Duration(secs * float64(time.Second)), Only: only,
		SSLMode: sslMode,
	}
}

// URL is a libpq-style URL; both pgx and lib/pq accept it.
func (p Params) URL(user, password string) string {
	if user == "" {
		user, password = p.User, p.Password
	}
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=%s&connect_timeout=10", user, password, p.Host, p.Port, p.DB, p.SSLMode)
}

// Scenarios reads the canonical list from tests/drivers/scenarios.py so the languages cannot drift.
func Scenarios() []string {
	// The binary lives in tests/drivers/build/bin; DRV_SCENARIOS_FILE overrides.
	exe, _ := os.Executable()
	candidates := []string{
		os.Getenv("DRV_SCENARIOS_FILE"),
		filepath.Join(filepath.Dir(exe), "..", "..", "scenarios.py"),
	}
	for _, path := range candidates {
		if path == "" {
			continue
		}
		src, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		text := string(src)
		start := strings.Index(text, "SCENARIO_TABLE")
		end := strings.Index(text[start:], "\n]\n")
		re := regexp.MustCompile(`(?m)^\s+\(?\s*"([a-z_0-9]+)",`)
		var names []string
		for _, m := range re.FindAllStringSubmatch(text[start:start+end], -1) {
			names = append(names, m[1])
		}
		return names
	}
	panic("scenarios.py not found (set DRV_SCENARIOS_FILE)")
}

type NotApplicable struct{ Reason string }

func (e NotApplicable) Error() string { return e.Reason }

func Check(cond bool, format string, args ...interface{}) {
	if !cond {
		panic(fmt.Errorf("check failed: "+format, args...))
	}
}

// Must turns an unexpected error into a scenario failure.
func Must(err error) {
	if err != nil {
		panic(err)
	}
}

// SQLStater is implemented by both pgconn.PgError (via SQLState) and a lib/pq adapter.
type SQLStater interface{ SQLState() string }

func StateOf(err error) string {
	var s SQLStater
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

func Describe(err error) string {
	if err == nil {
		return "<nil>"
	}
	msg := strings.SplitN(err.Error(), "\n", 2)[0]
	if st := StateOf(err); st != "" {
		msg = fmt.Sprintf("[%s] %s", st, msg)
	}
	if len(msg) > 500 {
		msg = msg[:500]
	}
	return msg
}

func ExpectState(err error, states ...string) {
	if err == nil {
		panic(fmt.Errorf("expected SQLSTATE %s, but the statement succeeded", strings.Join(states, "/")))
	}
	got := StateOf(err)
	for _, s := range states {
		if got == s {
			return
		}
	}
	panic(fmt.Errorf("expected SQLSTATE %s, got %s", strings.Join(states, "/"), Describe(err)))
}

func Unique(prefix string) string {
	return fmt.Sprintf("drv_%s_%d_%d", prefix, os.Getpid(), rand.New(rand.NewSource(time.Now().UnixNano())).Intn(1<<30))
}

var payloadOnce sync.Once
var payload []byte

func ByteaPayload() []byte {
	payloadOnce.Do(func() {
		r := rand.New(rand.NewSource(20240601))
		payload = make([]byte, ByteaSize)
		r.Read(payload)
	})
	return payload
}

func MD5Hex(b []byte) string {
	h := md5.Sum(b)
	return hex.EncodeToString(h[:])
}

type CopyRow struct {
	K int32
	V string
}

func CopyRows() []CopyRow {
	rows := make([]CopyRow, RowsCopy)
	for i := range rows {
		v := fmt.Sprintf("row-%d", i)
		if i%1000 == 0 {
			v += "\ttab\\back"
		}
		rows[i] = CopyRow{int32(i), v}
	}
	return rows
}

var outMu sync.Mutex

func Emit(driver, scenario, status, detail string) {
	b, _ := json.Marshal(map[string]string{"driver": driver, "scenario": scenario, "status": status, "detail": detail})
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

func EmitVersion(driver, version string) {
	b, _ := json.Marshal(map[string]string{"driver": driver, "version": version})
	os.Stdout.Write(append(b, '\n'))
}

type Scenario func() string

// Run executes every selected scenario in its own goroutine with a deadline; a panic or returned
// failure becomes a "fail" line, NotApplicable an "na" line.
func Run(driver string, p Params, table map[string]Scenario) {
	for _, name := range Scenarios() {
		if len(p.Only) > 0 && !p.Only[name] {
			continue
		}
		fn, ok := table[name]
		if !ok {
			Emit(driver, name, "fail", "scenario not implemented by this program")
			continue
		}
		type outcome struct {
			detail string
			err    interface{}
		}
		done := make(chan outcome, 1)
		start := time.Now()
		go func() {
			defer func() {
				if r := recover(); r != nil {
					done <- outcome{err: r}
				}
			}()
			done <- outcome{detail: fn()}
		}()
		select {
		case o := <-done:
			secs := time.Since(start).Seconds()
			switch e := o.err.(type) {
			case nil:
				d := o.detail
				if d == "" {
					d = "ok"
				}
				Emit(driver, name, "pass", fmt.Sprintf("%s (%.2fs)", d, secs))
			case NotApplicable:
				Emit(driver, name, "na", e.Reason)
			case error:
				Emit(driver, name, "fail", Describe(e))
			default:
				Emit(driver, name, "fail", fmt.Sprint(e))
			}
		case <-time.After(p.Timeout):
			Emit(driver, name, "fail", fmt.Sprintf("timed out after %.0fs", p.Timeout.Seconds()))
		}
	}
	os.Exit(0)
}

// RunClients runs fn(cid) for n clients at once and fails with a summary if any failed.
func RunClients(n int, fn func(cid int)) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(cid int) {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					mu.Lock()
					if e, ok := r.(error); ok {
						failures = append(failures, fmt.Sprintf("client %d: %s", cid, Describe(e)))
					} else {
						failures = append(failures, fmt.Sprintf("client %d: %v", cid, r))
					}
					mu.Unlock()
				}
			}()
			fn(cid)
		}(i)
	}
	wg.Wait()
	if len(failures) > 0 {
		panic(fmt.Errorf("%d/%d clients failed; %s", len(failures), n, failures[0]))
	}
}

// GoVersion is the toolchain that built the program (the "versions tested" line of the report).
func GoVersion() string { return runtime.Version() }
