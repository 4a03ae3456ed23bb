package labelset

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestParseLabelsCSV(t *testing.T) {
	dir := filepath.Join("data", "set")
	csvPath := filepath.Join(dir, "labels.csv")
	rows, hasSlide, err := ParseCSV(strings.NewReader("slide,label,path\nS1,parasitized,a/1.png\nS2, uninfected ,b/2.png\nS2,1,c.png\n"), csvPath)
	if err != nil {
		t.Fatal(err)
	}
	want := []Row{
		{filepath.Join(dir, "a/1.png"), true, "S1", ""},
		{filepath.Join(dir, "b/2.png"), false, "S2", ""},
		{filepath.Join(dir, "c.png"), true, "S2", ""},
	}
	if !hasSlide || len(rows) != len(want) {
		t.Fatalf("rows %+v, slide column %v", rows, hasSlide)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, rows[i], want[i])
		}
	}
	if rows, _, err := ParseCSV(strings.NewReader("path,label,slide,device\nx.png,0,S, dev-1 \n"), csvPath); err != nil || rows[0].Device != "dev-1" {
		t.Errorf("device column: %+v %v", rows, err)
	}
	if rows, hasSlide, err := ParseCSV(strings.NewReader("path,label\nx.png,0\n"), csvPath); err != nil || hasSlide || len(rows) != 1 || rows[0].Slide != "" {
		t.Errorf("without slides: %+v %v %v", rows, hasSlide, err)
	}
	for _, bad := range []struct{ in, mention string }{
		{"", "header"},
		{"path,slide\nx.png,S\n", "want path and label"},
		{"path,label\nx.png,maybe\n", "line 2"},
		{"path,label\nx.png,1\n,0\n", "line 3: path"},
		{"path,label\n../x.png,1\n", "inside the folder"},
		{"path,label\n/etc/x.png,1\n", "inside the folder"},
		{"path,label\nx.png\n", "wrong number of fields"},
	} {
		_, _, err := ParseCSV(strings.NewReader(bad.in), csvPath)
		if err == nil || !strings.Contains(err.Error(), bad.mention) || !strings.Contains(err.Error(), csvPath) {
			t.Errorf("%q: error %v, want one naming %s and %q", bad.in, err, csvPath, bad.mention)
		}
	}
}

func FuzzParseLabelsCSV(f *testing.F) {
	f.Add("path,label,slide\na.png,parasitized,S1\n")
	f.Add("label,path\n0,b.png\n1,\"c,d.png\"\n")
	f.Add("path,label\n\"unterminated,1\n")
	f.Fuzz(func(t *testing.T, in string) {
		rows, _, err := ParseCSV(strings.NewReader(in), "labels.csv")
		if err != nil {
			return
		}
		for _, r := range rows {
			if rel, err := filepath.Rel("", r.Path); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
				t.Fatalf("accepted a path outside the folder: %+v", r)
			}
		}
	})
}
