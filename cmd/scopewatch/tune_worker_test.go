package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/retune/retunetest"
	"github.com/scopewatch/scopewatch/internal/synth"
	"github.com/scopewatch/scopewatch/internal/testutil"
	"github.com/scopewatch/scopewatch/tuning"
)

const workerTestStudy = `name: worker-test
objective: {builtin: head, metric: val_loss, direction: minimize}
parameters:
  - {name: lr, role: nuisance, type: float, min: 1e-3, max: 3e-2, log: true}
  - {name: patience, role: fixed, value: 3}
  - {name: batch_size, role: fixed, value: 64}
budget: {trials: 8, explore: 4, parallel: 2, max_epochs: 15}
pruning: {method: none}
replicates: {finalists: 1, seeds: 2}
seed: 5
`

// workerProc is a real `tune worker` process.
type workerProc struct {
	cmd  *exec.Cmd
	logs *syncedBuffer
}

type syncedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startWorker(t *testing.T, args []string, logs *syncedBuffer) *workerProc {
	t.Helper()
	self, _ := os.Executable()
	cmd := exec.Command(self, append([]string{"__scopewatch", "tune", "worker"}, args...)...)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return &workerProc{cmd: cmd, logs: logs}
}

// TestTuneWorkerKilledMidStudy: a `tune worker` process SIGKILLed during
// its study completes the job after a restart, with the model an
// uninterrupted worker makes and a single offer, whose bundle reassembles
// and verifies.
func TestTuneWorkerKilledMidStudy(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	crops := func(name string, seed int64, shift float64) string {
		d := filepath.Join(tmp, name)
		if _, err := synth.WriteCells(ctx, synth.CellsConfig{Dir: d, N: 500, Seed: seed, CellsPerSlide: 25, Knobs: synth.Knobs{StainShift: shift}}); err != nil {
			t.Fatal(err)
		}
		return d
	}
	nominal, shifted := crops("nominal", 100511, 0), crops("shifted", 100512, 60)
	dataset := filepath.Join(tmp, "dataset")
	c, err := feedback.OpenCollector(ctx, feedback.CollectorConfig{Dir: dataset})
	if err != nil {
		t.Fatal(err)
	}
	retunetest.FillDataset(t, c, "lab-1", shifted)
	c.Close()
	study := filepath.Join(tmp, "study.yaml")
	os.WriteFile(study, []byte(workerTestStudy), 0o644)
	pub, priv, err := inference.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	keyPrefix := filepath.Join(tmp, "fleet")
	if err := inference.WriteKeyPair(keyPrefix, "fleet", pub, priv); err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs(filepath.Join("..", ".."))
	args := func(b *testutil.Broker, dir string) []string {
		return []string{"--broker", b.URL(), "--db", filepath.Join(dir, "worker.db"), "--out", filepath.Join(dir, "jobs"),
			"--key", keyPrefix + ".key", "--dataset", filepath.Join(dataset, "collect.db"), "--collect=false",
			"--model", filepath.Join(root, "models", "default"), "--keys", filepath.Join(root, "models", "keys"),
			"--nominal", nominal, "--study", study, "--min-samples", "100", "--baseline-sims", "100"}
	}
	waitSubscribed := func(p *workerProc) {
		testutil.Eventually(t, 30*time.Second, func() bool {
			return bytes.Contains([]byte(p.logs.String()), []byte("retune worker subscribed"))
		}, "the worker did not subscribe: %s", p.logs.String())
	}
	const id = "retune-dev-1-42"

	// Uninterrupted, for the result to compare with.
	refBroker := testutil.StartMosquitto(t)
	refObs := retunetest.NewObserver(t, refBroker.URL(), "lab-1")
	refLogs := &syncedBuffer{}
	ref := startWorker(t, args(refBroker, filepath.Join(tmp, "ref")), refLogs)
	waitSubscribed(ref)
	retunetest.PublishRequest(t, refBroker.URL(), "lab-1", id)
	want := refObs.WaitEvent(t, wire.RetuneAccepted, 4*time.Minute)
	ref.cmd.Process.Signal(syscall.SIGTERM)
	ref.cmd.Wait()

	broker := testutil.StartMosquitto(t)
	obs := retunetest.NewObserver(t, broker.URL(), "lab-1")
	dir := filepath.Join(tmp, "killed")
	logs := &syncedBuffer{}
	defer func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	}()
	p := startWorker(t, args(broker, dir), logs)
	waitSubscribed(p)
	retunetest.PublishRequest(t, broker.URL(), "lab-1", id)
	journal := filepath.Join(dir, "jobs", "jobs", id, "retune", "study", "journal.jsonl")
	testutil.Eventually(t, 2*time.Minute, func() bool {
		recs, err := tuning.ReadJournal(journal)
		tells := 0
		for _, r := range recs {
			if r.Type == tuning.RecordTell {
				tells++
			}
		}
		return err == nil && tells >= 3
	}, "the study did not get to 3 trials")
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	if n := len(obs.Offers()); n != 0 {
		t.Fatalf("%d offers before the job finished", n)
	}

	p = startWorker(t, args(broker, dir), logs)
	got := obs.WaitEvent(t, wire.RetuneAccepted, 4*time.Minute)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("worker exit after SIGTERM: %v", err)
	}
	if got.Version != want.Version {
		t.Fatalf("the killed and resumed worker offered %s, an uninterrupted one %s", got.Version, want.Version)
	}
	if n := len(obs.Offers()); n != 1 {
		t.Fatalf("%d offers, want 1", n)
	}
	off, b := obs.Reassemble(t, pub)
	if off.Version != got.Version || b.Manifest.Threshold <= 0 {
		t.Fatalf("offer %s, bundle threshold %v", off.Version, b.Manifest.Threshold)
	}
	recs, err := tuning.ReadJournal(journal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tuning.Replay(recs); err != nil {
		t.Fatalf("journal after kill and resume: %v", err)
	}
}
