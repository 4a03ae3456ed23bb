package tuning

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fakeSamples(domain string, slides, perSlide int, devices int) []Sample {
	var out []Sample
	for s := range slides {
		for c := range perSlide {
			h := sha256.Sum256(fmt.Appendf(nil, "%s/%d/%d", domain, s, c))
			dev := ""
			if devices > 0 {
				dev = fmt.Sprintf("dev-%d", s%devices)
			}
			out = append(out, Sample{Path: fmt.Sprintf("%s/s%d/c%d.png", domain, s, c), SHA256: hex.EncodeToString(h[:]),
				Label: c % 2, Slide: fmt.Sprintf("s%d", s), Device: dev, Domain: domain})
		}
	}
	return out
}

func TestSnapshotSplits(t *testing.T) {
	in := append(fakeSamples("nominal", 20, 30, 0), fakeSamples("feedback", 12, 25, 0)...)
	s, err := NewSnapshot(in, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Slide-disjoint: a slide of a domain is in one split only.
	where := map[string]string{}
	for _, x := range s.Samples {
		k := x.Domain + "/" + x.Slide
		if w, ok := where[k]; ok && w != x.Split {
			t.Fatalf("slide %s in %s and %s", k, w, x.Split)
		}
		where[k] = x.Split
	}
	// Every domain is in every split, in roughly the asked proportions.
	for _, d := range []string{"nominal", "feedback"} {
		n := float64(len(s.Rows(SplitTrain, d)) + len(s.Rows(SplitVal, d)) + len(s.Rows(SplitTest, d)))
		te, va := float64(len(s.Rows(SplitTest, d)))/n, float64(len(s.Rows(SplitVal, d)))/n
		if te < 0.2 || te > 0.35 || va < 0.15 || va > 0.3 {
			t.Errorf("domain %s: test %.2f, validation %.2f of its samples", d, te, va)
		}
	}
	// The splits and the hash depend on content only, not on input order.
	rev := make([]Sample, len(in))
	for i, x := range in {
		x.Path = "elsewhere/" + x.Path
		rev[len(in)-1-i] = x
	}
	s2, err := NewSnapshot(rev, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Hash != s.Hash {
		t.Fatalf("hash changed with order and paths: %s vs %s", s2.Hash, s.Hash)
	}
	for i := range s.Samples {
		if s.Samples[i].Split != s2.Samples[i].Split {
			t.Fatalf("sample %d: split %s vs %s", i, s.Samples[i].Split, s2.Samples[i].Split)
		}
	}
	// A relabelled sample is a new snapshot.
	in[0].Label = 1 - in[0].Label
	s3, err := NewSnapshot(in, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s3.Hash == s.Hash {
		t.Fatal("a relabelled sample kept the snapshot's hash")
	}
}

func TestSnapshotDeviceDisjoint(t *testing.T) {
	s, err := NewSnapshot(fakeSamples("feedback", 30, 10, 5), SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Grouping["feedback"] != "device" {
		t.Fatalf("grouping %q with 5 devices, want device", s.Grouping["feedback"])
	}
	where := map[string]string{}
	for _, x := range s.Samples {
		if w, ok := where[x.Device]; ok && w != x.Split {
			t.Fatalf("device %s in %s and %s", x.Device, w, x.Split)
		}
		where[x.Device] = x.Split
	}
}

func TestSnapshotRefusals(t *testing.T) {
	oneClass := fakeSamples("feedback", 10, 40, 0)
	for i := range oneClass {
		oneClass[i].Label = 0
	}
	dup := fakeSamples("feedback", 10, 40, 0)
	conflict := append(dup, dup[3])
	conflict[len(conflict)-1].Label = 1 - dup[3].Label
	for _, c := range []struct {
		name    string
		in      []Sample
		wantMsg string
	}{
		{"too few labels", fakeSamples("feedback", 5, 10, 0), "floor is 200"},
		{"single slide", fakeSamples("feedback", 1, 400, 0), "1 slide(s)"},
		{"two slides", fakeSamples("feedback", 2, 200, 0), "2 slide(s)"},
		{"one class", oneClass, "no image of class 1"},
		{"conflicting labels", conflict, "same image labelled"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewSnapshot(c.in, SnapshotOptions{})
			if !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), c.wantMsg) {
				t.Fatalf("err %v, want ErrSnapshot saying %q", err, c.wantMsg)
			}
		})
	}
	// An exact duplicate is counted and left out, not an error.
	s, err := NewSnapshot(append(dup, dup[3]), SnapshotOptions{})
	if err != nil || s.Duplicates != 1 || len(s.Samples) != len(dup) {
		t.Fatalf("duplicate: err %v, %d duplicates, %d samples", err, s.Duplicates, len(s.Samples))
	}
}

func TestLedger(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "sealed.jsonl")
	l := OpenLedger(path)
	if err := l.Check("snapA", "model1"); err != nil {
		t.Fatalf("empty ledger: %v", err)
	}
	e := SealedEntry{Snapshot: "snapA", Model: "model1", Version: "v1", Out: "out1", At: time.Unix(0, 0).UTC()}
	if err := l.Seal(e); err != nil {
		t.Fatal(err)
	}
	// The same model again (a resume) passes; another model is refused,
	// also through a second Ledger on the same file.
	if err := OpenLedger(path).Seal(e); err != nil {
		t.Fatalf("same model: %v", err)
	}
	e2 := e
	e2.Model = "model2"
	if err := OpenLedger(path).Seal(e2); !errors.Is(err, ErrSealedTestUsed) {
		t.Fatalf("second model: %v, want ErrSealedTestUsed", err)
	}
	e3 := e2
	e3.Snapshot = "snapB"
	if err := l.Seal(e3); err != nil {
		t.Fatalf("new snapshot: %v", err)
	}
	// A torn tail (a Seal that never returned) is cut off; the entries
	// before it still hold.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"snapshot":"snapC","mod`)
	f.Close()
	if err := l.Check("snapA", "model2"); !errors.Is(err, ErrSealedTestUsed) {
		t.Fatalf("after a torn line: %v", err)
	}
	if err := l.Seal(SealedEntry{Snapshot: "snapC", Model: "m"}); err != nil {
		t.Fatalf("seal after a torn line: %v", err)
	}
	raw, _ := os.ReadFile(path)
	if n := strings.Count(string(raw), "\n"); n != 4 || strings.Contains(string(raw), `"mod"`) {
		t.Fatalf("ledger after repair:\n%s", raw)
	}
	// A damaged line inside the file stops retunes instead of unsealing.
	os.WriteFile(path, append([]byte("garbage\n"), raw...), 0o644)
	if err := l.Check("snapA", "model2"); err == nil || errors.Is(err, ErrSealedTestUsed) {
		t.Fatalf("damaged ledger: %v, want an error naming the line", err)
	}
}

func TestChooseThreshold(t *testing.T) {
	for _, c := range []struct {
		name string
		p    []float64
		y    []int
		prev float64
		lo   float64
		hi   float64
	}{
		// Separable: any threshold in the gap is perfect; nearest 0.5 wins.
		{"separable", []float64{0.1, 0.2, 0.8, 0.9}, []int{0, 0, 1, 1}, 0, 0.5, 0.5},
		{"separable high", []float64{0.1, 0.6, 0.7, 0.9}, []int{0, 0, 1, 1}, 0, 0.649, 0.651},
		// Many negatives with a tail: the threshold moves up past it.
		{"tail", []float64{0.1, 0.2, 0.55, 0.6, 0.62, 0.9, 0.95}, []int{0, 0, 0, 0, 0, 1, 1}, 0, 0.7, 0.9},
		// Balanced and overlapping: at their own prevalence the threshold
		// sits low (one negative above it costs as much as a positive
		// below); at 5% positives the negatives' tail decides and it rises
		// above every negative.
		{"balanced", []float64{0.1, 0.2, 0.3, 0.5, 0.7, 0.4, 0.6, 0.8, 0.9, 0.95}, []int{0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, 0, 0.35, 0.55},
		{"balanced at 5%", []float64{0.1, 0.2, 0.3, 0.5, 0.7, 0.4, 0.6, 0.8, 0.9, 0.95}, []int{0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, 0.05, 0.71, 0.8},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ChooseThreshold(c.p, c.y, c.prev); got < c.lo || got > c.hi {
				t.Fatalf("threshold %v, want in [%v, %v]", got, c.lo, c.hi)
			}
		})
	}
}

func TestCompare(t *testing.T) {
	// 40 slides of 20 cells; the new model is right on every cell, the
	// incumbent wrong on slide 0..7's positives.
	var pNew, pOld []float64
	var y []int
	var slides []string
	for s := range 40 {
		for c := range 20 {
			lab := c % 2
			y = append(y, lab)
			slides = append(slides, fmt.Sprint(s))
			pNew = append(pNew, 0.1+0.8*float64(lab))
			if lab == 1 && s < 8 {
				pOld = append(pOld, 0.3)
			} else {
				pOld = append(pOld, 0.1+0.8*float64(lab))
			}
		}
	}
	c := Compare(pNew, pOld, y, slides, 0.5, 0.5, 500, 1)
	if c.New.Accuracy.Value != 1 || math.Abs(c.Incumbent.Accuracy.Value-0.9) > 1e-12 || math.Abs(c.Incumbent.Sensitivity.Value-0.8) > 1e-12 {
		t.Fatalf("point estimates: new %v, incumbent acc %v sens %v", c.New.Accuracy, c.Incumbent.Accuracy, c.Incumbent.Sensitivity)
	}
	d := c.AccuracyDiff
	if math.Abs(d.Value-0.1) > 1e-12 || !(d.Lo > 0 && d.Lo < 0.1 && d.Hi > 0.1) {
		t.Fatalf("accuracy difference %+v, want 0.1 with an interval above 0 around it", d)
	}
	if c.New.Slides != 40 || c.New.N != 800 || c.New.Positives != 400 {
		t.Fatalf("counts %+v", c.New)
	}
	fpr, tpr := ROC(pOld, y)
	if fpr[0] != 0 || tpr[0] != 0 || fpr[len(fpr)-1] != 1 || tpr[len(tpr)-1] != 1 {
		t.Fatalf("ROC ends %v,%v .. %v,%v", fpr[0], tpr[0], fpr[len(fpr)-1], tpr[len(tpr)-1])
	}
}

func TestWritePlotComparison(t *testing.T) {
	var pNew, pOld []float64
	var y []int
	for i := range 400 {
		lab := i % 2
		y = append(y, lab)
		pOld = append(pOld, math.Mod(float64(i)*0.37, 1)*0.6+0.4*float64(lab))
		pNew = append(pNew, math.Mod(float64(i)*0.37, 1)*0.3+0.7*float64(lab))
	}
	dir := t.TempDir()
	s, err := WritePlotComparison(dir, pNew, pOld, y, 0.5, 0.6, "test")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != PlotComparison || s.Panels != 3 {
		t.Fatalf("summary %+v", s)
	}
	for _, ext := range []string{"png", "svg"} {
		st, err := os.Stat(filepath.Join(dir, PlotComparison+"."+ext))
		if err != nil || st.Size() < 1000 {
			t.Fatalf("%s: %v (%d bytes)", ext, err, st.Size())
		}
	}
}
