package retune

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store/storetest"
	"github.com/scopewatch/scopewatch/internal/testutil"
	"github.com/scopewatch/scopewatch/tuning"
)

const site = "lab-1"

// collectorWith makes a collector dataset holding the crops of dirs as
// labelled feedback of site, from two devices, as devices and operators
// would have sent them.
func collectorWith(t *testing.T, dirs ...string) *feedback.Collector {
	t.Helper()
	ctx := context.Background()
	c, err := feedback.OpenCollector(ctx, feedback.CollectorConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	at := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	for _, dir := range dirs {
		f, err := os.Open(filepath.Join(dir, "labels.csv"))
		if err != nil {
			t.Fatal(err)
		}
		rows, err := csv.NewReader(f).ReadAll()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range rows[1:] {
			crop, err := os.ReadFile(filepath.Join(dir, r[0]))
			if err != nil {
				t.Fatal(err)
			}
			dev := []string{"dev-1", "dev-2"}[i%2]
			s := wire.Sample{Device: dev, Site: site, SlideHash: wire.SlideHash(r[2], []byte("secret-"+dev)), PParasitized: 0.5,
				LabelPredicted: wire.LabelUninfected, ModelVersion: "2026.11.28-2", Time: at.Add(time.Duration(i) * time.Second), Reason: wire.ReasonDrift}
			s.ID = wire.SampleID(s.Device, s.SlideHash, wire.SHA256Hex(crop), s.ModelVersion)
			topic := "scopewatch/v1/" + site + "/" + dev + "/feedback"
			recs, err := feedback.SampleRecords(topic, s, crop)
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range recs {
				if err := c.Handle(ctx, rec.Topic, rec.Payload); err != nil {
					t.Fatal(err)
				}
			}
			l, _ := wire.Label{FeedbackID: s.ID, Label: r[1], Who: "tech", Time: at.Add(time.Hour)}.Encode()
			if err := c.Handle(ctx, "scopewatch/v1/"+site+"/"+dev+"/label", l); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

// observer is a fleet operator's client: it sees the retained offer and
// chunks and the job events.
type observer struct {
	mu     sync.Mutex
	offers []wire.ModelOffer
	chunks map[string]wire.ModelChunk // topic -> chunk
	events []wire.RetuneEvent
	client mqtt.Client
}

func newObserver(t *testing.T, url string) *observer {
	o := &observer{chunks: map[string]wire.ModelChunk{}}
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("observer-%d", time.Now().UnixNano())).SetCleanSession(true)
	o.client = mqtt.NewClient(opts)
	if err := mqttconn.Wait(o.client.Connect(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.client.Disconnect(100) })
	tok := o.client.Subscribe("scopewatch/v1/"+site+"/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		o.mu.Lock()
		defer o.mu.Unlock()
		switch {
		case strings.HasSuffix(m.Topic(), "/model/offer"):
			if off, err := wire.DecodeModelOffer(m.Payload()); err == nil {
				o.offers = append(o.offers, off)
			}
		case strings.Contains(m.Topic(), "/model/chunk/"):
			if len(m.Payload()) == 0 {
				delete(o.chunks, m.Topic())
			} else if c, err := wire.DecodeModelChunk(m.Payload()); err == nil {
				o.chunks[m.Topic()] = c
			}
		case strings.HasSuffix(m.Topic(), "/retune/event"):
			var e wire.RetuneEvent
			if err := json.Unmarshal(m.Payload(), &e); err == nil {
				o.events = append(o.events, e)
			}
		}
	})
	if err := mqttconn.Wait(tok, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return o
}

func (o *observer) waitEvent(t *testing.T, state string, timeout time.Duration) wire.RetuneEvent {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		o.mu.Lock()
		for _, e := range o.events {
			if e.State == state {
				o.mu.Unlock()
				return e
			}
		}
		o.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	t.Fatalf("no %s event within %v; events %+v", state, timeout, o.events)
	return wire.RetuneEvent{}
}

func publishRequest(t *testing.T, url, id string) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("device-" + id))
	if err := mqttconn.Wait(c.Connect(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	p, _ := json.Marshal(wire.RetuneRequest{Schema: wire.RetuneSchema, ID: id, Site: site, Device: "dev-1", ModelVersion: "2026.11.28-2",
		Reason: "drift alarm in 3 of 5 windows", Evidence: map[string]float64{"alarms": 3}, Time: time.Now().UTC()})
	if err := mqttconn.Wait(c.Publish("scopewatch/v1/"+site+"/retune/request", 1, false, p), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

type workerEnv struct {
	t      *testing.T
	f      fixture
	broker *testutil.Broker
	dir    string
	dbPath string
	data   *feedback.Collector
	logs   *bytes.Buffer
}

// start runs a worker until ctx ends; it returns once the worker has
// subscribed (a plain subscription's session starts then: a request
// published before would never reach it).
func (e *workerEnv) start(ctx context.Context, handler func(slog.Handler) slog.Handler) (done chan error) {
	db := storetest.Open(e.t, e.dbPath, WorkerSchema)
	h := slog.Handler(slog.NewTextHandler(e.logs, nil))
	if handler != nil {
		h = handler(h)
	}
	root, _ := filepath.Abs(filepath.Join("..", ".."))
	w, err := NewWorker(ctx, WorkerConfig{
		DB: db, Dir: e.dir, Dataset: e.data, Key: e.f.key, Models: []string{filepath.Join(root, "models", "default")},
		Nominal: []string{cells(e.t, 100501, 500, 0)}, Study: e.f.study, Snapshot: fixSnapshot(), BaselineSims: 100, BootstrapReps: 400,
		OpenModel: func(dir string) (*inference.Bundle, *inference.Classifier, error) {
			keys, err := inference.LoadPublicKeys(filepath.Join(root, "models", "keys"))
			if err != nil {
				return nil, nil, err
			}
			b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: append(keys, e.f.pub)})
			if err != nil {
				return nil, nil, err
			}
			clf, err := inference.NewClassifier(b, inference.ClassifierOptions{})
			if err != nil {
				b.Close()
				return nil, nil, err
			}
			return b, clf, nil
		},
		Log: slog.New(h),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() {
		done <- w.Run(ctx, mqttconn.Config{Broker: e.broker.URL(), ClientID: "tune-worker-test"}, "", 30*time.Second)
	}()
	for deadline := time.Now().Add(20 * time.Second); w.Subscriptions() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatal("the worker did not subscribe within 20 s")
		}
	}
	return done
}

func fixSnapshot() tuning.SnapshotOptions { return tuning.SnapshotOptions{MinSamples: 100} }

func newWorkerEnv(t *testing.T) *workerEnv {
	f := setup(t)
	logs := &bytes.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	dir := t.TempDir()
	return &workerEnv{t: t, f: f, broker: testutil.StartMosquitto(t), dir: dir, dbPath: filepath.Join(dir, "worker.db"),
		data: collectorWith(t, cells(t, 100502, 500, 60)), logs: logs}
}

// reassemble takes the retained offer and its chunks as a device would and
// verifies the bundle with the fleet key.
func (o *observer) reassemble(t *testing.T, pub ed25519.PublicKey) (wire.ModelOffer, *inference.Bundle) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.offers) == 0 {
		t.Fatal("no offer")
	}
	off := o.offers[len(o.offers)-1]
	var chunks []wire.ModelChunk
	for _, c := range o.chunks {
		if c.Version == off.Version {
			chunks = append(chunks, c)
		}
	}
	archive, err := wire.AssembleModel(off, chunks)
	if err != nil {
		t.Fatalf("reassemble: %v", err)
	}
	path := filepath.Join(t.TempDir(), off.Version+".tar")
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := inference.OpenBundle(path, inference.BundleOptions{TrustedKeys: []ed25519.PublicKey{pub}})
	if err != nil {
		t.Fatalf("the offered bundle does not verify: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	if b.Manifest.Version != off.Version || b.ManifestSHA256 != off.ManifestSHA256 || b.Manifest.Signer != off.Signer {
		t.Fatalf("bundle %s (manifest %s) against offer %+v", b.Manifest.Version, b.ManifestSHA256, off)
	}
	return off, b
}

// TestWorkerEndToEnd: a retune request over a real broker becomes a
// retained offer whose chunks reassemble into a bundle that verifies; the
// redelivered request is one job.
func TestWorkerEndToEnd(t *testing.T) {
	e := newWorkerEnv(t)
	obs := newObserver(t, e.broker.URL())
	ctx, cancel := context.WithCancel(context.Background())
	done := e.start(ctx, nil)
	publishRequest(t, e.broker.URL(), "retune-dev-1-1")
	publishRequest(t, e.broker.URL(), "retune-dev-1-1") // a redelivery
	ev := obs.waitEvent(t, wire.RetuneAccepted, 3*time.Minute)
	off, b := obs.reassemble(t, e.f.pub)
	if ev.Version != off.Version || off.Incumbent != "2026.11.28-2" || off.Request != "retune-dev-1-1" || off.Site != site {
		t.Fatalf("event %+v, offer %+v", ev, off)
	}
	if o, err := inference.CompareVersions(b.Manifest.Version, off.Incumbent); err != nil || o != 1 {
		t.Fatalf("offered %s is not newer than %s", b.Manifest.Version, off.Incumbent)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	db := storetest.Open(t, e.dbPath, WorkerSchema)
	var n int
	db.QueryRow(`SELECT COUNT(*) FROM worker_jobs`).Scan(&n)
	if n != 1 {
		t.Fatalf("%d jobs for one request delivered twice", n)
	}
}

// TestWorkerResumesAfterStop: a worker stopped in the middle of a study
// finishes the job after a restart, with the model an uninterrupted
// worker makes, and one offer.
func TestWorkerResumesAfterStop(t *testing.T) {
	ref := newWorkerEnv(t)
	refObs := newObserver(t, ref.broker.URL())
	ctx, cancel := context.WithCancel(context.Background())
	done := ref.start(ctx, nil)
	publishRequest(t, ref.broker.URL(), "retune-dev-1-7")
	want := refObs.waitEvent(t, wire.RetuneAccepted, 3*time.Minute)
	cancel()
	<-done

	e := newWorkerEnv(t)
	obs := newObserver(t, e.broker.URL())
	ctx1, stop := context.WithCancel(context.Background())
	done = e.start(ctx1, func(h slog.Handler) slog.Handler {
		return cancelAfter{h: h, msg: "trial finished", n: new(int), cancel: stop}
	})
	publishRequest(t, e.broker.URL(), "retune-dev-1-7")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	offers := len(obs.offers)
	obs.mu.Unlock()
	if offers != 0 {
		t.Fatal("an interrupted job published an offer")
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done = e.start(ctx2, nil)
	got := obs.waitEvent(t, wire.RetuneAccepted, 3*time.Minute)
	cancel2()
	<-done
	if got.Version != want.Version {
		t.Fatalf("resumed job offered %s, an uninterrupted one %s", got.Version, want.Version)
	}
	if !strings.Contains(e.logs.String(), "retune resumes") || !strings.Contains(e.logs.String(), "retune features reused") {
		t.Fatal("the restarted worker did not resume the job's retune folder")
	}
	obs.reassemble(t, e.f.pub)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.offers) != 1 {
		t.Fatalf("%d offers", len(obs.offers))
	}
}
