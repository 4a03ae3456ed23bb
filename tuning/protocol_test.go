package tuning

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as a trial command: with TUNING_FAKE_TRIAL set it
// behaves as the named kind of trial instead of running the tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv("TUNING_FAKE_TRIAL"); mode != "" {
		os.Exit(fakeTrial(mode))
	}
	os.Exit(m.Run())
}

func fakeTrial(mode string) int {
	var in TrialInput
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		return 3
	}
	x, _ := number(in.Params["x"])
	switch mode {
	case "curve":
		for e := 1; e <= in.MaxEpochs; e++ {
			fmt.Printf("{\"epoch\": %d, \"val_loss\": %g, \"train_loss\": %g, \"note\": \"ok\"}\n", e, x*x+1/float64(e), x*x)
		}
	case "value":
		fmt.Printf("{\"value\": %g}\n", x+float64(in.Seed))
	case "exit":
		fmt.Println(`{"epoch": 1, "val_loss": 0.5}`)
		fmt.Fprintln(os.Stderr, "out of memory")
		return 2
	case "garbage":
		fmt.Println(`{"epoch": 1, "val_loss": 0.5}`)
		fmt.Println(`Epoch 2/10 loss=0.4`)
		time.Sleep(30 * time.Second) // must be stopped, not waited for
	case "nometric":
		fmt.Println(`{"epoch": 1, "accuracy": 0.5}`)
	case "slow":
		for e := 1; e <= 1000; e++ {
			fmt.Printf("{\"epoch\": %d, \"val_loss\": %g}\n", e, 1/float64(e))
			time.Sleep(20 * time.Millisecond)
		}
	}
	return 0
}

func fakeCommand(t *testing.T, mode string) []string {
	t.Helper()
	t.Setenv("TUNING_FAKE_TRIAL", mode)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}

func TestRunCommand(t *testing.T) {
	cases := []struct {
		mode, metric string
		state        string
		value        float64
		epochs       int
		reason       string
	}{
		{"curve", "val_loss", StateComplete, 4 + 1.0/3, 3, ""},
		{"value", "value", StateComplete, 2 + 7, 1, ""},
		{"exit", "val_loss", StateFailed, math.NaN(), 1, "exit status 2"},
		{"garbage", "val_loss", StateFailed, math.NaN(), 1, "stdout line 2: not a JSON object"},
		{"nometric", "val_loss", StateFailed, math.NaN(), 1, `no line reported "val_loss"`},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "trial-0001")
			in := TrialInput{Trial: 1, Seed: 7, Params: Params{"x": 2.0}, MaxEpochs: 3, Dir: dir}
			start := time.Now()
			o, err := RunCommand(context.Background(), fakeCommand(t, c.mode), in, c.metric, nil)
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("a failing trial was waited for instead of stopped")
			}
			if o.State != c.state || len(o.Epochs) != c.epochs || !strings.Contains(o.Reason, c.reason) {
				t.Fatalf("outcome %+v; want state %s, %d epochs, reason with %q", o, c.state, c.epochs, c.reason)
			}
			if math.IsNaN(c.value) != math.IsNaN(o.Value) || (!math.IsNaN(c.value) && math.Abs(o.Value-c.value) > 1e-9) {
				t.Fatalf("value %v, want %v", o.Value, c.value)
			}
		})
	}
}

func TestRunCommandStderrToLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "trial")
	o, err := RunCommand(context.Background(), fakeCommand(t, "exit"), TrialInput{Dir: dir, MaxEpochs: 1}, "val_loss", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "stderr.log"))
	if err != nil || !strings.Contains(string(b), "out of memory") {
		t.Fatalf("stderr.log = %q, %v", b, err)
	}
	if !strings.Contains(o.Reason, "stderr.log") {
		t.Fatalf("reason %q does not point to the log", o.Reason)
	}
}

func TestRunCommandPrunes(t *testing.T) {
	var seen []int
	keep := func(epoch int, v float64) bool {
		seen = append(seen, epoch)
		return epoch < 3
	}
	start := time.Now()
	o, err := RunCommand(context.Background(), fakeCommand(t, "slow"), TrialInput{Dir: t.TempDir(), MaxEpochs: 1000}, "val_loss", keep)
	if err != nil {
		t.Fatal(err)
	}
	if o.State != StatePruned || len(o.Epochs) != 3 || o.Value != 1.0/3 {
		t.Fatalf("outcome %+v, want pruned after 3 epochs with value 1/3", o)
	}
	if len(seen) != 3 {
		t.Fatalf("keep called for epochs %v", seen)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("pruned trial ran on for %v", d)
	}
}

func TestRunCommandCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := RunCommand(ctx, fakeCommand(t, "slow"), TrialInput{Dir: t.TempDir(), MaxEpochs: 1000}, "val_loss", nil)
	if err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("cancelled trial: %v", err)
	}
}

func TestRunCommandMissingProgram(t *testing.T) {
	_, err := RunCommand(context.Background(), []string{filepath.Join(t.TempDir(), "no-such-trial")}, TrialInput{Dir: t.TempDir()}, "value", nil)
	if err == nil || !strings.Contains(err.Error(), "no-such-trial") {
		t.Fatalf("missing program: %v", err)
	}
}
