package feedback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

func TestLabelsAgreementAndUnknown(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	l, err := NewLabels(ctx, db.DB, LabelsConfig{MaxSent: 100})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	for i := 0; i < 10; i++ {
		s := testSample(i)
		s.ID = fmt.Sprintf("fb-%d", i)
		s.LabelPredicted = wire.LabelUninfected
		if i%2 == 0 {
			s.Reason = wire.ReasonRandom
		}
		if err := l.Sent(ctx, s, int64(i/5)); err != nil {
			t.Fatal(err)
		}
	}
	put := func(id, label string, at time.Time) error {
		b, _ := wire.Label{FeedbackID: id, Label: label, Who: "tech", Time: at}.Encode()
		return l.Handle(ctx, b)
	}
	// 8 labels: fb-0..fb-7; the model is right on 0-5, wrong on 6, 7.
	for i := 0; i < 8; i++ {
		lab := wire.LabelUninfected
		if i >= 6 {
			lab = wire.LabelParasitized
		}
		if err := put(fmt.Sprintf("fb-%d", i), lab, t0); err != nil {
			t.Fatal(err)
		}
	}
	// A correction of fb-1, then a stale redelivery that must not undo it.
	put("fb-1", wire.LabelParasitized, t0.Add(time.Minute))
	put("fb-1", wire.LabelUninfected, t0)
	if err := put("fb-404", wire.LabelUninfected, t0); !errors.Is(err, ErrUnknownID) {
		t.Fatalf("unknown id: %v", err)
	}
	if err := l.Handle(ctx, []byte(`{"schema":"scopewatch.label/v1"}`)); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("malformed label: %v", err)
	}
	a, err := l.AgreementSince(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.Labelled != 8 || a.Agree != 5 || a.RandomLabelled != 4 || a.RandomAgree != 3 {
		t.Fatalf("agreement %+v", a)
	}
	if got := a.Accuracy(); got != 5.0/8 {
		t.Fatalf("accuracy %v", got)
	}
	a1, _ := l.AgreementSince(ctx, 1)
	if a1.Labelled != 3 {
		t.Fatalf("window filter: %+v", a1)
	}
}

func TestRetuneKofMWithCooldown(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	l, _ := NewLabels(ctx, db.DB, LabelsConfig{})
	clk := testutil.NewClock(time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC))
	r, err := NewRetuner(db.DB, l, RetuneConfig{K: 2, M: 3, MinLabelled: 3, Cooldown: time.Hour, Topic: "scopewatch/v1/lab/retune/request", Site: "lab", Device: "dev-1", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ev := map[string]float64{"ks": 0.31}
	window := func(alarm bool) *Record {
		rec, err := r.Window(ctx, alarm, "2026.11.0", "drift alarm", ev)
		if err != nil {
			t.Fatal(err)
		}
		clk.Add(10 * time.Minute)
		return rec
	}
	// Two alarmed windows but no labels yet: nothing.
	for range 2 {
		if window(true) != nil {
			t.Fatal("request without enough labels")
		}
	}
	for i := 0; i < 3; i++ {
		s := testSample(i)
		s.ID = fmt.Sprintf("fb-%d", i)
		if err := l.Sent(ctx, s, 0); err != nil {
			t.Fatal(err)
		}
		if err := l.Put(ctx, wire.Label{FeedbackID: s.ID, Label: wire.LabelParasitized, Who: "a", Time: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	// History is now alarm, alarm, quiet: still 2 of the last 3, and
	// labels exist, so it fires.
	rec := window(false)
	if rec == nil {
		t.Fatal("did not fire on 2 of 3 with labels")
	}
	var req wire.RetuneRequest
	if err := json.Unmarshal(rec.Payload, &req); err != nil {
		t.Fatal(err)
	}
	if req.Schema != wire.RetuneSchema || len(req.FeedbackIDs) != 3 || req.Evidence["ks"] != 0.31 || rec.Kind != KindAlert {
		t.Fatalf("request %+v", req)
	}
	// Cooldown: an hour, remembered by a new Retuner (restart).
	r3, _ := NewRetuner(db.DB, l, RetuneConfig{K: 1, M: 1, MinLabelled: 3, Cooldown: time.Hour, Topic: "scopewatch/v1/lab/retune/request", Now: clk.Now})
	r = r3
	for i := 0; i < 5; i++ {
		if window(true) != nil {
			t.Fatalf("fired during cooldown at step %d", i)
		}
	}
	if window(true) == nil {
		t.Fatal("did not fire after the cooldown")
	}
}

func TestLabelsSubscribeRealBroker(t *testing.T) {
	ctx := context.Background()
	b := testutil.StartMosquitto(t)
	db := openDB(t, "")
	l, _ := NewLabels(ctx, db.DB, LabelsConfig{})
	s := testSample(1)
	s.ID = "fb-live"
	l.Sent(ctx, s, 0)
	var rejected []string
	var mu sync.Mutex
	client, err := mqttconn.New(mqttconn.Config{Broker: b.URL(), ClientID: "dev-labels", AutoAckDisabled: true}, nil, mqttconn.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(100)
	testutil.Eventually(t, 5*time.Second, client.IsConnectionOpen, "not connected")
	if err := l.Subscribe(ctx, client, "scopewatch/v1/lab/dev-1/label", nil, func(r string) { mu.Lock(); rejected = append(rejected, r); mu.Unlock() }); err != nil {
		t.Fatal(err)
	}
	good, _ := wire.Label{FeedbackID: "fb-live", Label: wire.LabelParasitized, Who: "tech", Time: time.Now()}.Encode()
	for _, p := range [][]byte{[]byte("junk"), good} {
		if tok := client.Publish("scopewatch/v1/lab/dev-1/label", 1, false, p); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	testutil.Eventually(t, 5*time.Second, func() bool { a, _ := l.AgreementSince(ctx, 0); return a.Labelled == 1 }, "label not stored")
	mu.Lock()
	defer mu.Unlock()
	if len(rejected) != 1 || rejected[0] != RejectBadJSON {
		t.Fatalf("rejected %v", rejected)
	}
}
