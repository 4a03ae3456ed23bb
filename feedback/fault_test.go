package feedback

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// The acceptance run is long; by default the test uses a shortened
// schedule. Full run:
//
//	go test -run TestDeliveryUnderFaults -timeout 30m ./feedback/ -args -fault.n=10000 -fault.stop=40s -fault.rate=40
var (
	faultN    = flag.Int("fault.n", 2000, "feedback samples produced in TestDeliveryUnderFaults")
	faultStop = flag.Duration("fault.stop", 2*time.Second, "how long the broker stays down, each of three times")
	faultRate = flag.Float64("fault.rate", 250, "samples per second the producer makes")
	// mosquitto 2.0.11 does not restore shared subscriptions of persistent
	// sessions after a restart: what is published before the collector
	// resubscribes is dropped. The plain subscription is the default here;
	// -fault.group=tuners shows the loss.
	faultGroup = flag.String("fault.group", "", "shared subscription group of the collector (empty: plain subscription)")
	faultChunk = flag.Int("fault.chunk-every", 250, "every n-th sample carries a crop big enough to be chunked")
)

const childEnv = "SCOPEWATCH_FEEDBACK_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "producer" {
		if err := producerMain(); err != nil {
			fmt.Fprintln(os.Stderr, "producer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// faultSample is sample i of a run: same id and bytes in every process.
func faultSample(i, chunkEvery int) (wire.Sample, []byte) {
	w := 12
	if chunkEvery > 0 && i%chunkEvery == chunkEvery-1 {
		w = 200 // ~160 KB of noise: two chunks
	}
	crop := testutil.NoisePNG(w, w, uint64(i)+1)
	s := wire.Sample{Device: "dev-1", Site: "lab", SlideHash: wire.SlideHash(fmt.Sprintf("slide-%d", i/100), []byte("secret")),
		PParasitized: float64(i%100) / 100, LabelPredicted: wire.LabelUninfected, ModelVersion: "2026.11.0",
		Time: time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second), Reason: wire.ReasonRandom}
	if s.PParasitized >= 0.5 {
		s.LabelPredicted = wire.LabelParasitized
	}
	s.ID = wire.SampleID(s.Device, s.SlideHash, wire.SHA256Hex(crop), s.ModelVersion)
	return s, crop
}

var cursorSchema = store.Schema{Owner: "faulttest", Migrations: []store.Migration{
	{SQL: `CREATE TABLE faulttest_cursor (k INTEGER PRIMARY KEY CHECK (k=0), next INTEGER NOT NULL); INSERT INTO faulttest_cursor VALUES (0, 0)`},
}}

// producerMain is the device side, run as a child process so that it can be
// SIGKILLed: it resumes from its cursor, enqueues samples at a fixed rate
// and exits once everything was acknowledged.
func producerMain() error {
	ctx := context.Background()
	n, _ := strconv.Atoi(os.Getenv("FT_N"))
	rate, _ := strconv.ParseFloat(os.Getenv("FT_RATE"), 64)
	chunkEvery, _ := strconv.Atoi(os.Getenv("FT_CHUNK"))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, err := store.Open(ctx, os.Getenv("FT_DB"), store.Options{}, Schema(), cursorSchema)
	if err != nil {
		return err
	}
	ob, err := NewOutbox(ctx, db, OutboxConfig{AckTimeout: 3 * time.Second, Log: log})
	if err != nil {
		return err
	}
	client, err := mqttconn.New(mqttconn.Config{Broker: os.Getenv("FT_BROKER"), ClientID: "producer-dev-1",
		ConnectRetryInterval: 200 * time.Millisecond, MaxReconnectInterval: 500 * time.Millisecond, KeepAlive: 5 * time.Second}, log, mqttconn.Hooks{})
	if err != nil {
		return err
	}
	if err := ob.Start(client); err != nil {
		return err
	}
	var next int
	if err := db.QueryRow(`SELECT next FROM faulttest_cursor`).Scan(&next); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "producer: starting at %d\n", next)
	start := time.Now()
	for i := next; i < n; i++ {
		if d := time.Until(start.Add(time.Duration(float64(i-next) / rate * float64(time.Second)))); d > 0 {
			time.Sleep(d)
		}
		s, crop := faultSample(i, chunkEvery)
		recs, err := SampleRecords("scopewatch/v1/lab/dev-1/feedback", s, crop)
		if err != nil {
			return err
		}
		if err := ob.EnqueueBatch(ctx, recs...); err != nil {
			return err
		}
		// The cursor commits after the sample: a kill in between
		// re-enqueues one sample under the same id, which is harmless.
		if _, err := db.Exec(`UPDATE faulttest_cursor SET next=?`, i+1); err != nil {
			return err
		}
	}
	for {
		if r, _ := ob.Depth(); r == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := ob.Close(cctx); err != nil {
		return err
	}
	client.Disconnect(200)
	return db.Close()
}

type child struct {
	cmd  *exec.Cmd
	done chan error
}

func startProducer(t *testing.T, env []string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"=producer"), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return c
}

func startCollector(t *testing.T, ctx context.Context, brokerURL string) (*Collector, *countMetrics) {
	t.Helper()
	m := newCountMetrics()
	c, err := OpenCollector(ctx, CollectorConfig{Dir: t.TempDir(), Metrics: m,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(rctx, mqttconn.Config{Broker: brokerURL, ClientID: "collector-1", ConnectRetryInterval: 200 * time.Millisecond,
			MaxReconnectInterval: 500 * time.Millisecond, KeepAlive: 5 * time.Second}, *faultGroup)
	}()
	t.Cleanup(func() { cancel(); <-done; c.Close() })
	return c, m
}

func completeCount(c *Collector) int {
	st, err := c.Stats(context.Background())
	if err != nil {
		return -1
	}
	return st.Complete
}

// checkDataset asserts the collector holds exactly the expected ids, each
// with a hash-verified image.
func checkDataset(t *testing.T, c *Collector, want map[string]bool) {
	t.Helper()
	ctx := context.Background()
	rows, err := c.DB().QueryContext(ctx, `SELECT id FROM collect_samples WHERE complete=1`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for rows.Next() {
		var id string
		rows.Scan(&id)
		got[id] = true
	}
	rows.Close()
	for id := range want {
		if !got[id] {
			t.Errorf("sample %s missing", id)
		}
	}
	for id := range got {
		if !want[id] {
			t.Errorf("unexpected sample %s", id)
		}
	}
	checked, bad, err := c.Verify(ctx)
	if err != nil || len(bad) > 0 || checked != len(want) {
		t.Fatalf("verify: %d checked, bad %v, %v", checked, bad, err)
	}
}

// Acceptance: samples made during a run in which the broker is stopped
// three times and the producer is SIGKILLed once all reach the collector,
// exactly once each by id, every image hash-verified.
func TestDeliveryUnderFaults(t *testing.T) {
	n, stop := *faultN, *faultStop
	ctx := context.Background()
	var opts []testutil.BrokerOption
	if os.Getenv("FT_DEBUG") != "" {
		opts = append(opts, testutil.WithConfig("log_type all"))
	}
	b := testutil.StartMosquitto(t, opts...)
	c, m := startCollector(t, ctx, b.URL())
	testutil.Eventually(t, 10*time.Second, func() bool { return c.Subscriptions() > 0 }, "collector never subscribed")

	dbPath := filepath.Join(t.TempDir(), "device.db")
	env := []string{"FT_DB=" + dbPath, "FT_BROKER=" + b.URL(), "FT_N=" + strconv.Itoa(n),
		"FT_RATE=" + strconv.FormatFloat(*faultRate, 'f', -1, 64), "FT_CHUNK=" + strconv.Itoa(*faultChunk)}
	begin := time.Now()
	p := startProducer(t, env)
	produce := time.Duration(float64(n) / *faultRate * float64(time.Second))
	// Spread three outages and the kill over the production period.
	slot := produce / 5
	outage := func(i int) {
		time.Sleep(slot)
		t.Logf("%6.1fs outage %d: broker stopped for %v (collector has %d)", time.Since(begin).Seconds(), i, stop, completeCount(c))
		b.Stop()
		time.Sleep(stop)
		b.Start()
	}
	outage(1)
	time.Sleep(slot / 2)
	t.Logf("%6.1fs SIGKILL producer", time.Since(begin).Seconds())
	p.cmd.Process.Signal(syscall.SIGKILL)
	if err := <-p.done; err == nil {
		t.Fatal("producer finished before it could be killed; raise -fault.n or lower -fault.rate")
	}
	p = startProducer(t, env)
	outage(2)
	outage(3)
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("producer failed: %v", err)
		}
	case <-time.After(produce + 10*time.Minute):
		t.Fatal("producer did not finish")
	}
	if !testutil.WaitFor(2*time.Minute, func() bool { return completeCount(c) >= n }) {
		st, _ := c.Stats(ctx)
		if os.Getenv("FT_DEBUG") != "" {
			os.WriteFile("/tmp/ft-broker.log", []byte(b.Log()), 0o644)
		}
		t.Fatalf("collector has %+v of %d after the producer finished; subscriptions %d", st, n, c.Subscriptions())
	}
	elapsed := time.Since(begin)
	want := map[string]bool{}
	for i := 0; i < n; i++ {
		s, _ := faultSample(i, *faultChunk)
		want[s.ID] = true
	}
	checkDataset(t, c, want)

	db, err := store.Open(ctx, dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := store.IntegrityCheck(ctx, db); err != nil {
		t.Fatal(err)
	}
	var left int
	db.QueryRow(`SELECT COUNT(*) FROM feedback_outbox`).Scan(&left)
	if left != 0 {
		t.Fatalf("%d records left in the device outbox", left)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t.Logf("RESULT n=%d distinct=%d verified=%d duplicates_received=%d rejected=%v outage=%v x3 sigkill=1 elapsed=%v",
		n, len(want), len(want), m.accepted["duplicate"], m.rejected, stop, elapsed.Round(time.Second))
	if len(m.rejected) > 0 {
		t.Fatalf("collector rejected messages: %v", m.rejected)
	}
}

// The network between device and broker flaps every second or so: all
// samples arrive.
func TestDeliveryFlappingNetwork(t *testing.T) {
	ctx := context.Background()
	b := testutil.StartMosquitto(t)
	c, m := startCollector(t, ctx, b.URL())
	proxy := testutil.StartProxy(t, b.Addr())
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	client, err := mqttconn.New(mqttconn.Config{Broker: proxy.URL(), ClientID: "flappy", ConnectRetryInterval: 100 * time.Millisecond,
		MaxReconnectInterval: 200 * time.Millisecond, KeepAlive: 2 * time.Second}, nil, mqttconn.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(100)
	if err := ob.Start(client); err != nil {
		t.Fatal(err)
	}
	defer ob.Close(ctx)
	fctx, stopFlap := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); proxy.Flap(fctx, 700*time.Millisecond, 300*time.Millisecond) }()
	const n = 600
	want := map[string]bool{}
	for i := 0; i < n; i++ {
		s, crop := faultSample(i, 100)
		recs, err := SampleRecords("scopewatch/v1/lab/dev-1/feedback", s, crop)
		if err != nil {
			t.Fatal(err)
		}
		if err := ob.EnqueueBatch(ctx, recs...); err != nil {
			t.Fatal(err)
		}
		want[s.ID] = true
		time.Sleep(5 * time.Millisecond)
	}
	testutil.Eventually(t, 60*time.Second, func() bool { r, _ := ob.Depth(); return r == 0 }, "outbox not drained while flapping")
	stopFlap()
	wg.Wait()
	testutil.Eventually(t, 60*time.Second, func() bool { return completeCount(c) == n }, "collector has %d of %d", completeCount(c), n)
	checkDataset(t, c, want)
	t.Logf("flapping: %d cuts, %d duplicates received", proxy.Cuts(), m.accepted["duplicate"])
	if proxy.Cuts() < 3 {
		t.Fatalf("only %d cuts: the test did not flap", proxy.Cuts())
	}
}

// The broker comes back with its persistence wiped: the collector renews
// its subscription on connect, and the device delivers what it stored
// while the broker was gone.
func TestDeliveryBrokerWiped(t *testing.T) {
	ctx := context.Background()
	b := testutil.StartMosquitto(t)
	c, _ := startCollector(t, ctx, b.URL())
	testutil.Eventually(t, 10*time.Second, func() bool { return c.Subscriptions() > 0 }, "collector never subscribed")
	subs := c.Subscriptions()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	add := func(from, to int) {
		for i := from; i < to; i++ {
			s, crop := faultSample(i, 50)
			recs, _ := SampleRecords("scopewatch/v1/lab/dev-1/feedback", s, crop)
			if err := ob.EnqueueBatch(ctx, recs...); err != nil {
				t.Fatal(err)
			}
			want[s.ID] = true
		}
	}
	add(0, 100)
	client, err := mqttconn.New(mqttconn.Config{Broker: b.URL(), ClientID: "dev-wiped", ConnectRetryInterval: 100 * time.Millisecond,
		MaxReconnectInterval: 200 * time.Millisecond}, nil, mqttconn.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(100)
	testutil.Eventually(t, 10*time.Second, client.IsConnectionOpen, "device not connected")
	// The device stores samples while the broker is down. It starts
	// sending only once the collector is back: a wiped broker forgets
	// subscriptions, and MQTT drops what is published before a subscriber
	// exists (see the report: only the broker's persistence closes that gap).
	b.Stop()
	add(100, 300)
	b.StartWiped()
	testutil.Eventually(t, 10*time.Second, func() bool { return c.Subscriptions() > subs }, "collector did not resubscribe after the wipe")
	if err := ob.Start(client); err != nil {
		t.Fatal(err)
	}
	defer ob.Close(ctx)
	testutil.Eventually(t, 30*time.Second, func() bool { r, _ := ob.Depth(); return r == 0 }, "outbox not drained")
	testutil.Eventually(t, 30*time.Second, func() bool { return completeCount(c) == 300 }, "collector has %d of 300", completeCount(c))
	checkDataset(t, c, want)
}

// The database cannot grow (disk full): Enqueue fails with ErrDiskFull and
// stores nothing, sending goes on, and once sending freed pages Enqueue
// works again.
func TestOutboxDiskFull(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var pages int
	db.QueryRow(`PRAGMA page_count`).Scan(&pages)
	if _, err := db.Exec(fmt.Sprintf(`PRAGMA max_page_count = %d`, pages+40)); err != nil {
		t.Fatal(err)
	}
	var full error
	stored := 0
	for i := 0; i < 1000 && full == nil; i++ {
		full = ob.Enqueue(ctx, rec(KindResult, fmt.Sprintf("r-%d", i), 8<<10))
		if full == nil {
			stored++
		}
	}
	if !errors.Is(full, ErrDiskFull) {
		t.Fatalf("err = %v after %d records, want ErrDiskFull", full, stored)
	}
	if r, _ := ob.Depth(); r != stored {
		t.Fatalf("depth %d, stored %d", r, stored)
	}
	pub := &fakePub{connected: true}
	ob.Start(pub)
	defer ob.Close(ctx)
	testutil.Eventually(t, 10*time.Second, func() bool { r, _ := ob.Depth(); return r == 0 }, "not drained")
	// Counted before the next enqueue: the running sender may publish
	// "after" at once.
	if len(pub.sent()) != stored {
		t.Fatalf("sent %d of %d", len(pub.sent()), stored)
	}
	if err := ob.Enqueue(ctx, rec(KindResult, "after", 8<<10)); err != nil {
		t.Fatalf("enqueue after space was freed: %v", err)
	}
	if err := store.IntegrityCheck(ctx, db.DB); err != nil {
		t.Fatal(err)
	}
}
