package feedback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store/storetest"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

type doneToken struct{ err error }

func (t doneToken) Wait() bool                     { return true }
func (t doneToken) WaitTimeout(time.Duration) bool { return true }
func (t doneToken) Done() <-chan struct{}          { c := make(chan struct{}); close(c); return c }
func (t doneToken) Error() error                   { return t.err }

// fakePub records publish order; it fails publishes while failing is set.
type fakePub struct {
	mu        sync.Mutex
	connected bool
	failing   bool
	topics    []string
	payloads  []string
}

func (f *fakePub) Publish(topic string, qos byte, retained bool, payload interface{}) mqtt.Token {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return doneToken{err: errors.New("refused")}
	}
	f.topics = append(f.topics, topic)
	f.payloads = append(f.payloads, string(payload.([]byte)))
	return doneToken{}
}

func (f *fakePub) IsConnectionOpen() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.connected }

func (f *fakePub) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.payloads...)
}

func openDB(t testing.TB, path string) *storeDB {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "outbox.db")
	}
	return &storeDB{DB: storetest.Open(t, path, Schema()), path: path}
}

const topicFB = "scopewatch/v1/lab/dev/feedback"

func rec(kind Kind, id string, size int) Record {
	topic := "scopewatch/v1/lab/dev/" + string(kind)
	p := make([]byte, size)
	copy(p, id)
	return Record{ID: id, Kind: kind, Topic: topic, Payload: p, QoS: 1}
}

func TestOutboxPriorityOrder(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{Window: 1})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 0; i < 3; i++ {
		for _, k := range []Kind{KindFeedback, KindResult, KindAlert} {
			if err := ob.Enqueue(ctx, Record{ID: fmt.Sprintf("%s-%d", k, i), Kind: k, Topic: "scopewatch/v1/lab/dev/" + string(k), Payload: []byte(fmt.Sprintf("%s-%d", k, i)), QoS: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, k := range []Kind{KindAlert, KindResult, KindFeedback} {
		for i := 0; i < 3; i++ {
			want = append(want, fmt.Sprintf("%s-%d", k, i))
		}
	}
	pub := &fakePub{connected: true}
	if err := ob.Start(pub); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { r, _ := ob.Depth(); return r == 0 }, "outbox not drained")
	if err := ob.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := pub.sent()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("send order\n got %v\nwant %v", got, want)
	}
}

func TestOutboxValidationIdempotenceStatus(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]Record{
		"no id":      {Kind: KindAlert, Topic: "a/b"},
		"bad kind":   {ID: "x", Kind: "other", Topic: "a/b"},
		"wildcard":   {ID: "x", Kind: KindAlert, Topic: "a/+"},
		"upper":      {ID: "x", Kind: KindAlert, Topic: "A/b"},
		"qos":        {ID: "x", Kind: KindAlert, Topic: "a/b", QoS: 3},
		"too large":  {ID: "x", Kind: KindAlert, Topic: "a/b", Payload: make([]byte, wire.MaxPayload+1)},
		"too levels": {ID: "x", Kind: KindAlert, Topic: "a/b/c/d/e/f/g/h"},
	} {
		if err := ob.Enqueue(ctx, r); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := ob.Enqueue(ctx, Record{ID: "big", Kind: KindAlert, Topic: "a/b", Payload: make([]byte, wire.MaxPayload)}); err != nil {
		t.Fatalf("payload of exactly MaxPayload refused: %v", err)
	}
	r := rec(KindResult, "slide-1", 10)
	for i := 0; i < 3; i++ {
		if err := ob.Enqueue(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		s := Record{ID: fmt.Sprintf("status-%d", i), Kind: KindStatus, Topic: "scopewatch/v1/lab/dev/status", Payload: []byte(fmt.Sprint(i)), QoS: 1, Retain: true}
		if err := ob.Enqueue(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := ob.Depth()
	if n != 3 { // big, slide-1, status-2
		t.Fatalf("depth = %d, want 3", n)
	}
	p, err := ob.Pending(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if p[0].ID != "status-2" || string(p[0].Payload) != "2" || !p[0].Retain {
		t.Fatalf("first pending = %+v, want latest status", p[0])
	}
	// Reopening reloads the depth from the database.
	ob2, err := NewOutbox(ctx, db.DB, OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if n2, b2 := ob2.Depth(); n2 != 3 || b2 != int64(wire.MaxPayload+10+1) {
		t.Fatalf("reopened depth = %d, %d", n2, b2)
	}
}

// The broker is gone for an hour (simulated clock): the producer keeps
// making feedback and some results and alerts. The outbox stays within its
// bound by dropping the oldest feedback, keeps every result and alert, and
// raises one drop alert per interval.
func TestOutboxBoundWhileBrokerGoneForAnHour(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	clk := testutil.NewClock(time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC))
	cfg := OutboxConfig{MaxRecords: 500, MaxBytes: 400 << 10, Now: clk.Now, AlertTopic: "scopewatch/v1/lab/dev/alert",
		Device: "dev", DropAlertInterval: 15 * time.Minute}
	ob, err := NewOutbox(ctx, db.DB, cfg)
	if err != nil {
		t.Fatal(err)
	}
	results, alerts := 0, 0
	maxRecords, maxBytes := 0, int64(0)
	// One feedback sample (with a 2 KiB crop) every 2 s, a result every
	// minute, an alert every 10 minutes: 1800 samples for a 500-record bound.
	for s := 0; s < 3600; s += 2 {
		if err := ob.Enqueue(ctx, rec(KindFeedback, fmt.Sprintf("fb-%d", s), 2048)); err != nil {
			t.Fatal(err)
		}
		if s%60 == 0 {
			results++
			if err := ob.Enqueue(ctx, rec(KindResult, fmt.Sprintf("res-%d", s), 300)); err != nil {
				t.Fatal(err)
			}
		}
		if s%600 == 0 {
			alerts++
			if err := ob.Enqueue(ctx, rec(KindAlert, fmt.Sprintf("al-%d", s), 200)); err != nil {
				t.Fatal(err)
			}
		}
		r, b := ob.Depth()
		maxRecords, maxBytes = max(maxRecords, r), max(maxBytes, b)
		clk.Add(2 * time.Second)
	}
	if maxRecords > cfg.MaxRecords || maxBytes > cfg.MaxBytes {
		t.Fatalf("outbox exceeded its bound: %d records / %d bytes (bound %d / %d)", maxRecords, maxBytes, cfg.MaxRecords, cfg.MaxBytes)
	}
	pend, err := ob.Pending(ctx, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[Kind]int{}
	newestFB := ""
	for _, p := range pend {
		byKind[p.Kind]++
		if p.Kind == KindFeedback {
			newestFB = p.ID
		}
		if strings.HasPrefix(p.ID, "alert-outbox-drop-") {
			// The drop alert has the one alert shape.
			var a wire.Alert
			if err := json.Unmarshal(p.Payload, &a); err != nil || a.Schema != wire.AlertSchema || a.ID != p.ID ||
				a.Kind != "outbox_feedback_dropped" || a.Severity != wire.SeverityWarn || a.Device != "dev" || a.Dropped < 1 ||
				a.DroppedTotal < a.Dropped || a.At.IsZero() || a.Detail == "" {
				t.Fatalf("drop alert %s: %+v (%v)", p.ID, a, err)
			}
		}
	}
	if byKind[KindResult] != results {
		t.Fatalf("results kept = %d, want all %d", byKind[KindResult], results)
	}
	dropAlerts := byKind[KindAlert] - alerts
	if dropAlerts < 1 || dropAlerts > 4 {
		t.Fatalf("drop alerts = %d, want between 1 and 4 for one hour at one per 15 min", dropAlerts)
	}
	if newestFB != "fb-3598" {
		t.Fatalf("newest kept feedback = %s, want the last one produced (oldest are dropped first)", newestFB)
	}
	if got, want := ob.DroppedTotal(), int64(1800-byKind[KindFeedback]); got != want {
		t.Fatalf("dropped total = %d, want %d", got, want)
	}
	t.Logf("hour without broker: max depth %d records / %d bytes (bound %d / %d), dropped %d feedback, %d drop alerts",
		maxRecords, maxBytes, cfg.MaxRecords, cfg.MaxBytes, ob.DroppedTotal(), dropAlerts)

	// Only results and alerts left: new feedback is refused, results still accepted.
	for i := 0; i < 600; i++ {
		if err := ob.Enqueue(ctx, rec(KindResult, fmt.Sprintf("flood-%d", i), 10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ob.Enqueue(ctx, rec(KindFeedback, "late", 10)); !errors.Is(err, ErrDropped) {
		t.Fatalf("feedback into an outbox full of results: %v, want ErrDropped", err)
	}
}

// Chunked samples are dropped as a whole group.
func TestOutboxDropsWholeGroups(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{MaxRecords: 10})
	if err != nil {
		t.Fatal(err)
	}
	var batch []Record
	for i := 0; i < 4; i++ {
		r := rec(KindFeedback, fmt.Sprintf("s1/c%d", i), 10)
		r.Group = "s1"
		batch = append(batch, r)
	}
	if err := ob.EnqueueBatch(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 7; i++ {
		if err := ob.Enqueue(ctx, rec(KindFeedback, fmt.Sprintf("x%d", i), 10)); err != nil {
			t.Fatal(err)
		}
	}
	pend, _ := ob.Pending(ctx, 100)
	if len(pend) != 7 {
		t.Fatalf("pending %d, want 7 (the 4-record group dropped as one)", len(pend))
	}
	for _, p := range pend {
		if p.Group == "s1" {
			t.Fatalf("part of dropped group left: %s", p.ID)
		}
	}
}

// A publish the broker refuses while connected is retried with backoff and
// is not deleted.
func TestOutboxRetriesRefusedPublish(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{RetryMin: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pub := &fakePub{connected: true, failing: true}
	ob.Enqueue(ctx, rec(KindResult, "r1", 5))
	ob.Start(pub)
	defer ob.Close(ctx)
	time.Sleep(200 * time.Millisecond)
	if n, _ := ob.Depth(); n != 1 {
		t.Fatalf("refused record removed: depth %d", n)
	}
	var attempts int
	db.QueryRow(`SELECT attempts FROM feedback_outbox`).Scan(&attempts)
	if attempts < 2 {
		t.Fatalf("attempts = %d, want retries", attempts)
	}
	pub.mu.Lock()
	pub.failing = false
	pub.mu.Unlock()
	testutil.Eventually(t, 5*time.Second, func() bool { n, _ := ob.Depth(); return n == 0 }, "not delivered after the broker accepted")
}

// Real broker: records made while it is down are delivered once it is up,
// and a graceful Close leaves what was not acknowledged in the database.
func TestOutboxRealBrokerDownThenUp(t *testing.T) {
	ctx := context.Background()
	b := testutil.StartMosquitto(t)
	received := subscribe(t, b.URL(), "scopewatch/v1/+/+/+")
	b.Stop()

	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{AckTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	client, err := mqttconn.New(mqttconn.Config{Broker: b.URL(), ClientID: "dev", ConnectRetryInterval: 100 * time.Millisecond, MaxReconnectInterval: 200 * time.Millisecond}, nil, mqttconn.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(100)
	if err := ob.Start(client); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if err := ob.Enqueue(ctx, rec(KindFeedback, fmt.Sprintf("fb-%03d", i), 100)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if n, _ := ob.Depth(); n != 200 {
		t.Fatalf("depth with broker down = %d, want 200", n)
	}
	b.Start()
	testutil.Eventually(t, 20*time.Second, func() bool { n, _ := ob.Depth(); return n == 0 }, "outbox not drained after broker came back")
	testutil.Eventually(t, 10*time.Second, func() bool { return received.distinct() == 200 }, "subscriber got %d distinct", received.distinct())
	if err := ob.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(ctx, rec(KindAlert, "after-close", 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("enqueue after close: %v", err)
	}
}

type sink struct {
	mu  sync.Mutex
	ids map[string]int
}

func (s *sink) distinct() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.ids) }

func subscribe(t *testing.T, url, filter string) *sink {
	t.Helper()
	s := &sink{ids: map[string]int{}}
	// The subscription is made on every connect, but the helper returns only
	// once the broker has acknowledged the first one: a caller that stops
	// the broker right away must find the subscription in its persisted
	// session, or what is published before the sink reconnects is lost and
	// the test measures the race instead of the outbox.
	subscribed := make(chan error, 1)
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID("sink").SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOnConnectHandler(func(c mqtt.Client) {
			tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
				p := m.Payload()
				end := 0
				for end < len(p) && p[end] != 0 {
					end++
				}
				s.mu.Lock()
				s.ids[string(p[:end])]++
				s.mu.Unlock()
			})
			go func() {
				tok.Wait()
				select {
				case subscribed <- tok.Error():
				default:
				}
			}()
		})
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("subscribe %s: %v", filter, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("subscribe %s: no SUBACK within 5 s", filter)
	}
	return s
}

// EnqueueTx records in the caller's transaction: nothing before it commits
// (or after a rollback), the record and a sender wake-up after.
func TestOutboxEnqueueTx(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tx, _ := db.BeginTx(ctx, nil)
	if _, err := ob.EnqueueTx(ctx, tx, rec(KindResult, "r-rolled-back", 10)); err != nil {
		t.Fatal(err)
	}
	tx.Rollback()
	if n, _ := ob.Depth(); n != 0 {
		t.Fatalf("depth %d after a rollback", n)
	}

	tx, _ = db.BeginTx(ctx, nil)
	st := rec(KindStatus, "st-1", 5)
	committed, err := ob.EnqueueTx(ctx, tx, rec(KindResult, "r1", 10), rec(KindAlert, "a1", 10), st)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	committed()
	if n, b := ob.Depth(); n != 3 || b != 25 {
		t.Fatalf("depth %d records, %d bytes; want 3, 25", n, b)
	}
	// A newer status supersedes the pending one; an id already pending is
	// a no-op.
	tx, _ = db.BeginTx(ctx, nil)
	committed, err = ob.EnqueueTx(ctx, tx, rec(KindStatus, "st-2", 7), rec(KindResult, "r1", 10))
	if err != nil {
		t.Fatal(err)
	}
	tx.Commit()
	committed()
	pend, _ := ob.Pending(ctx, 10)
	var ids []string
	for _, p := range pend {
		ids = append(ids, p.ID)
	}
	if want := []string{"st-2", "a1", "r1"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("pending %v, want %v in send order", ids, want)
	}
	if n, _ := ob.Depth(); n != 3 {
		t.Fatalf("depth %d, want 3", n)
	}
	tx, _ = db.BeginTx(ctx, nil)
	defer tx.Rollback()
	if _, err := ob.EnqueueTx(ctx, tx, rec(KindFeedback, "fb", 10)); !errors.Is(err, ErrDroppable) {
		t.Fatalf("feedback through EnqueueTx: %v", err)
	}
}
