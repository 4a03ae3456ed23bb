package drift

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestReadCSV(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		n, dim  int
		labels  bool
		wantErr bool
	}{
		{"scores only", "path,p_parasitized\na.png,0.1\nb.png,1\n", 2, 0, false, false},
		{"features and labels", "f1,p_parasitized,f0,truth\n0.5,0.2,1e-3,parasitized\n-2,0.9,3,0\n", 2, 2, true, false},
		{"failed image skipped", "p_parasitized,error\n0.3,\n,decode: truncated\n", 1, 0, false, false},
		{"missing column", "score\n0.1\n", 0, 0, false, true},
		{"out of range", "p_parasitized\n1.5\n", 0, 0, false, true},
		{"nan", "p_parasitized\nNaN\n", 0, 0, false, true},
		{"feature gap", "p_parasitized,f0,f2\n0.1,1,2\n", 0, 0, false, true},
		{"bad feature", "p_parasitized,f0\n0.1,inf\n", 0, 0, false, true},
		{"bad label", "p_parasitized,truth\n0.1,2\n", 0, 0, false, true},
		{"ragged", "p_parasitized,f0\n0.1\n", 0, 0, false, true},
		{"empty", "p_parasitized\n", 0, 0, false, true},
		{"focus", "p_parasitized,focus\n0.1,12.5\n0.2,0\n", 2, 0, false, false},
		{"failed image without focus skipped", "p_parasitized,focus,error\n0.1,3,\n,,decode: truncated\n", 1, 0, false, false},
		{"negative focus", "p_parasitized,focus\n0.1,-1\n", 0, 0, false, true},
		{"nan focus", "p_parasitized,focus\n0.1,NaN\n", 0, 0, false, true},
		{"infinite focus", "p_parasitized,focus\n0.1,+Inf\n", 0, 0, false, true},
		{"empty focus", "p_parasitized,focus\n0.1,\n", 0, 0, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := ReadCSV(strings.NewReader(tc.in), 0)
			if tc.wantErr {
				if !errors.Is(err, ErrBadCSV) {
					t.Fatalf("err = %v, want ErrBadCSV", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(rows.Scores) != tc.n || (tc.dim > 0 && len(rows.Features[0]) != tc.dim) || (rows.Labels != nil) != tc.labels {
				t.Fatalf("got %d rows, features %v, labels %v", len(rows.Scores), rows.Features, rows.Labels)
			}
		})
	}
	rows, _ := ReadCSV(strings.NewReader("f1,p_parasitized,f0,truth\n0.5,0.2,1e-3,parasitized\n"), 0)
	if rows.Features[0][0] != 1e-3 || rows.Features[0][1] != 0.5 || rows.Labels[0] != 1 {
		t.Fatalf("columns mapped wrong: %+v", rows)
	}
	rows, err := ReadCSV(strings.NewReader("slide,p_parasitized\ns1,0.5\ns2,0.25\n"), 0)
	if err != nil || len(rows.Slides) != 2 || rows.Slides[1] != "s2" {
		t.Fatalf("slide column: %+v, %v", rows, err)
	}
	rows, err = ReadCSV(strings.NewReader("focus,p_parasitized\n 7.25 ,0.5\n0,0.25\n"), 0)
	if err != nil || len(rows.Focus) != 2 || rows.Focus[0] != 7.25 || rows.Focus[1] != 0 {
		t.Fatalf("focus column: %+v, %v", rows, err)
	}
	if rows, _ := ReadCSV(strings.NewReader("p_parasitized\n0.5\n"), 0); rows.Focus != nil {
		t.Fatalf("no focus column: focus %v, want nil", rows.Focus)
	}
	if _, err := ReadCSV(strings.NewReader("p_parasitized\n0\n0\n0\n"), 2); !errors.Is(err, ErrBadCSV) {
		t.Fatalf("row limit: err = %v", err)
	}
}

func FuzzReadCSV(f *testing.F) {
	f.Add("path,p_parasitized\na.png,0.1\nb.png,1\n")
	f.Add("f1,p_parasitized,f0,truth\n0.5,0.2,1e-3,parasitized\n-2,0.9,3,0\n")
	f.Add("p_parasitized,error\n0.3,\n,decode: truncated\n")
	f.Add("\ufeffp_parasitized,f0\n\"0.5\",\"1\"\n")
	f.Add("p_parasitized,focus,slide\n0.5,12.25,s1\n0.1,0,s2\n")
	f.Add("p_parasitized,focus,error\n,,bad\n0.5,1e308,\n")
	f.Fuzz(func(t *testing.T, in string) {
		rows, err := ReadCSV(strings.NewReader(in), 1000)
		if err != nil {
			if !errors.Is(err, ErrBadCSV) {
				t.Fatalf("error not wrapping ErrBadCSV: %v", err)
			}
			return
		}
		for i, s := range rows.Scores {
			if !(s >= 0 && s <= 1) {
				t.Fatalf("row %d: score %v accepted", i, s)
			}
		}
		if rows.Features != nil && len(rows.Features) != len(rows.Scores) {
			t.Fatalf("%d feature rows for %d scores", len(rows.Features), len(rows.Scores))
		}
		if rows.Slides != nil && len(rows.Slides) != len(rows.Scores) {
			t.Fatalf("%d slides for %d scores", len(rows.Slides), len(rows.Scores))
		}
		if rows.Focus != nil && len(rows.Focus) != len(rows.Scores) {
			t.Fatalf("%d focus values for %d scores", len(rows.Focus), len(rows.Scores))
		}
		for i, v := range rows.Focus {
			if !(v >= 0) || math.IsInf(v, 0) {
				t.Fatalf("row %d: focus %v accepted", i, v)
			}
		}
		if rows.Labels != nil && len(rows.Labels) != len(rows.Scores) {
			t.Fatalf("%d labels for %d scores", len(rows.Labels), len(rows.Scores))
		}
	})
}
