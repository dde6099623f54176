// check-kstatus runs kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, what Flux's
// health check and `kstatus`-based tools run) on every DualWritePipeline fixture in -dir and
// compares the result with the fixture's annotation dualwrite.io/kstatus-expected. The fixtures
// are written by the Rust test kstatus_fixtures_match_the_conditions from the operator's own
// conditions code. Prints one line per fixture and "N passed, M failed"; exits 1 on a failure.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

const expectedAnnotation = "dualwrite.io/kstatus-expected"

func main() {
	dir := flag.String("dir", "testdata", "directory of pipeline fixtures (*.json)")
	flag.Parse()
	files, err := filepath.Glob(filepath.Join(*dir, "*.json"))
	if err != nil || len(files) == 0 {
		fmt.Fprintf(os.Stderr, "check-kstatus: no fixtures in %s\n", *dir)
		os.Exit(1)
	}
	sort.Strings(files)
	passed, failed := 0, 0
	for _, f := range files {
		name := filepath.Base(f)
		raw, err := os.ReadFile(f)
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", name, err)
			failed++
			continue
		}
		// As the API machinery decodes it (integers stay int64, as kstatus expects).
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fmt.Printf("FAIL %s: %v\n", name, err)
			failed++
			continue
		}
		want := u.GetAnnotations()[expectedAnnotation]
		res, err := status.Compute(u)
		switch {
		case err != nil:
			fmt.Printf("FAIL %s: status.Compute: %v\n", name, err)
			failed++
		case want == "":
			fmt.Printf("FAIL %s: no %s annotation\n", name, expectedAnnotation)
			failed++
		case string(res.Status) != want:
			fmt.Printf("FAIL %s: kstatus reads %s (%s), want %s\n", name, res.Status, res.Message, want)
			failed++
		default:
			fmt.Printf("ok   %s: %s (%s)\n", name, res.Status, res.Message)
			passed++
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
