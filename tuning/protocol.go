package tuning

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Trial states as the journal records them.
const (
	StateComplete = "complete"
	StatePruned   = "pruned"
	StateFailed   = "failed"
)

// TrialInput is the one JSON object a trial command reads on stdin.
type TrialInput struct {
	Trial     int    `json:"trial"`
	Seed      int64  `json:"seed"`
	Params    Params `json:"params"`
	MaxEpochs int    `json:"max_epochs"`
	// Dir is the trial's own folder: the command may write checkpoints or
	// plots there; the engine writes its stderr to Dir/stderr.log.
	Dir string `json:"dir"`
}

// Epoch is one JSON line a trial printed: every numeric key it reported.
type Epoch map[string]float64

// Outcome is what became of one trial.
type Outcome struct {
	State string `json:"state"`
	// Value is the metric of the last line (for a pruned trial, of the last
	// line before it was stopped); NaN when the trial failed.
	Value  float64 `json:"value"`
	Epochs []Epoch `json:"epochs,omitempty"`
	// Reason says why a trial failed or was pruned.
	Reason string `json:"reason,omitempty"`
}

// maxLine bounds one line of a trial's output, so that a command printing
// garbage without newlines cannot grow the engine's memory.
const maxLine = 1 << 20

// stopGrace is how long a pruned trial has between SIGTERM and SIGKILL.
const stopGrace = 5 * time.Second

// RunCommand runs one trial through the command protocol: argv with in on
// stdin, JSON lines read from stdout, stderr to in.Dir/stderr.log. After
// each line that carries metric, keep(epoch, value) decides whether the
// trial goes on; when it says no, the command gets SIGTERM (SIGKILL after a
// grace period) and the trial is pruned. A non-zero exit, a line that is not
// a JSON object, or no line with the metric fails the trial; the reason
// names the line. The error is non-nil only when the trial could not be
// started or ctx was cancelled; a failing trial is an Outcome.
func RunCommand(ctx context.Context, argv []string, in TrialInput, metric string, keep func(epoch int, value float64) bool) (Outcome, error) {
	if len(argv) == 0 {
		return Outcome{}, errors.New("tuning: empty trial command")
	}
	if err := os.MkdirAll(in.Dir, 0o755); err != nil {
		return Outcome{}, fmt.Errorf("trial %d: %w", in.Trial, err)
	}
	stdin, err := json.Marshal(in)
	if err != nil {
		return Outcome{}, fmt.Errorf("trial %d: encode input: %w", in.Trial, err)
	}
	logf, err := os.Create(filepath.Join(in.Dir, "stderr.log"))
	if err != nil {
		return Outcome{}, fmt.Errorf("trial %d: %w", in.Trial, err)
	}
	defer logf.Close()

	// One way to stop a trial, whether the pruner or the caller asks: cancel
	// its context, which sends SIGTERM and, after stopGrace, SIGKILL.
	trialCtx, stop := context.WithCancel(ctx)
	defer stop()
	cmd := exec.CommandContext(trialCtx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(append(stdin, '\n'))
	cmd.Stderr = logf
	cmd.Dir = in.Dir
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	out, err := cmd.StdoutPipe()
	if err != nil {
		return Outcome{}, fmt.Errorf("trial %d: %w", in.Trial, err)
	}
	if err := cmd.Start(); err != nil {
		return Outcome{}, fmt.Errorf("trial %d: start %s: %w", in.Trial, argv[0], err)
	}

	var (
		o      = Outcome{Value: math.NaN()}
		pruned bool
		bad    string
	)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	line := 0
	for sc.Scan() {
		line++
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 || pruned || bad != "" {
			continue // drain, so the command never blocks on a full pipe
		}
		ep, err := parseEpoch(raw)
		if err != nil {
			bad = fmt.Sprintf("stdout line %d: %v", line, err)
			stop()
			continue
		}
		o.Epochs = append(o.Epochs, ep)
		v, ok := ep[metric]
		if !ok {
			continue
		}
		o.Value = v
		k := len(o.Epochs)
		if e, ok := ep["epoch"]; ok {
			k = int(e)
		}
		if keep != nil && !keep(k, v) {
			pruned = true
			stop()
		}
	}
	scanErr := sc.Err()
	waitErr := cmd.Wait()
	if ctx.Err() != nil {
		return Outcome{}, fmt.Errorf("trial %d: %w", in.Trial, ctx.Err())
	}
	switch {
	case bad != "":
		o.State, o.Value, o.Reason = StateFailed, math.NaN(), bad
	case scanErr != nil:
		o.State, o.Value, o.Reason = StateFailed, math.NaN(), fmt.Sprintf("stdout line %d: %v", line+1, scanErr)
	case pruned:
		o.State, o.Reason = StatePruned, fmt.Sprintf("stopped after epoch %d", len(o.Epochs))
	case waitErr != nil:
		o.State, o.Value, o.Reason = StateFailed, math.NaN(), fmt.Sprintf("%s: %v (see %s)", argv[0], waitErr, filepath.Join(in.Dir, "stderr.log"))
	case math.IsNaN(o.Value):
		o.State, o.Reason = StateFailed, fmt.Sprintf("no line reported %q", metric)
	default:
		o.State = StateComplete
	}
	return o, nil
}

// parseEpoch reads one line: a JSON object whose numeric values are kept;
// other values (strings, lists) are allowed and ignored.
func parseEpoch(raw []byte) (Epoch, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		const show = 60
		s := string(raw)
		if len(s) > show {
			s = s[:show] + "…"
		}
		return nil, fmt.Errorf("not a JSON object: %q", s)
	}
	ep := Epoch{}
	for k, v := range m {
		if f, ok := v.(float64); ok && !math.IsInf(f, 0) {
			ep[k] = f
		}
	}
	return ep, nil
}

// outcomeJSON is Outcome on the wire: JSON has no NaN, so a failed trial's
// value is null.
type outcomeJSON struct {
	State  string   `json:"state"`
	Value  *float64 `json:"value"`
	Epochs []Epoch  `json:"epochs,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

// MarshalJSON writes a NaN value as null.
func (o Outcome) MarshalJSON() ([]byte, error) {
	w := outcomeJSON{State: o.State, Epochs: o.Epochs, Reason: o.Reason}
	if !math.IsNaN(o.Value) && !math.IsInf(o.Value, 0) {
		v := o.Value
		w.Value = &v
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads a null value as NaN.
func (o *Outcome) UnmarshalJSON(b []byte) error {
	var w outcomeJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*o = Outcome{State: w.State, Value: math.NaN(), Epochs: w.Epochs, Reason: w.Reason}
	if w.Value != nil {
		o.Value = *w.Value
	}
	return nil
}
