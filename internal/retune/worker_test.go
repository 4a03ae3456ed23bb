package retune

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/retune/retunetest"
	"github.com/scopewatch/scopewatch/internal/store/storetest"
	"github.com/scopewatch/scopewatch/internal/testutil"
	"github.com/scopewatch/scopewatch/tuning"
)

const site = "lab-1"

// collectorWith makes a collector dataset holding the crops of dirs as
// labelled feedback of site.
func collectorWith(t *testing.T, dirs ...string) *feedback.Collector {
	t.Helper()
	c, err := feedback.OpenCollector(context.Background(), feedback.CollectorConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	retunetest.FillDataset(t, c, site, dirs...)
	return c
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

// TestWorkerEndToEnd: a retune request over a real broker becomes a
// retained offer whose chunks reassemble into a bundle that verifies; the
// redelivered request is one job.
func TestWorkerEndToEnd(t *testing.T) {
	e := newWorkerEnv(t)
	obs := retunetest.NewObserver(t, e.broker.URL(), site)
	ctx, cancel := context.WithCancel(context.Background())
	done := e.start(ctx, nil)
	retunetest.PublishRequest(t, e.broker.URL(), site, "retune-dev-1-1")
	retunetest.PublishRequest(t, e.broker.URL(), site, "retune-dev-1-1") // a redelivery
	ev := obs.WaitEvent(t, wire.RetuneAccepted, 3*time.Minute)
	off, b := obs.Reassemble(t, e.f.pub)
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
	refObs := retunetest.NewObserver(t, ref.broker.URL(), site)
	ctx, cancel := context.WithCancel(context.Background())
	done := ref.start(ctx, nil)
	retunetest.PublishRequest(t, ref.broker.URL(), site, "retune-dev-1-7")
	want := refObs.WaitEvent(t, wire.RetuneAccepted, 3*time.Minute)
	cancel()
	<-done

	e := newWorkerEnv(t)
	obs := retunetest.NewObserver(t, e.broker.URL(), site)
	ctx1, stop := context.WithCancel(context.Background())
	done = e.start(ctx1, func(h slog.Handler) slog.Handler {
		return cancelAfter{h: h, msg: "trial finished", n: new(int), cancel: stop}
	})
	retunetest.PublishRequest(t, e.broker.URL(), site, "retune-dev-1-7")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if offers := len(obs.Offers()); offers != 0 {
		t.Fatal("an interrupted job published an offer")
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done = e.start(ctx2, nil)
	got := obs.WaitEvent(t, wire.RetuneAccepted, 3*time.Minute)
	cancel2()
	<-done
	if got.Version != want.Version {
		t.Fatalf("resumed job offered %s, an uninterrupted one %s", got.Version, want.Version)
	}
	if !strings.Contains(e.logs.String(), "retune resumes") || !strings.Contains(e.logs.String(), "retune features reused") {
		t.Fatal("the restarted worker did not resume the job's retune folder")
	}
	obs.Reassemble(t, e.f.pub)
	if n := len(obs.Offers()); n != 1 {
		t.Fatalf("%d offers", n)
	}
}
