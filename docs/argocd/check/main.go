// Command check runs the DualWritePipeline Argo CD health check (../health.lua) against its
// tests (../health_test.yaml and ../testdata/) the way Argo CD runs a health script from
// argocd-cm: gopher-lua, the object as the global `obj`, only the package, base and table
// libraries open (useOpenLibs off), a one-second deadline, and a returned table whose `status`
// must be a known health. It also checks that docs/argocd-health.md embeds health.lua verbatim
// and that every testdata file is under test.
//
// It runs the resource actions (../actions/<verb>/action.lua and ../actions/discovery.lua)
// against ../actions/action_test.yaml in Argo CD's test format (discoveryTests, actionTests) the
// way Argo CD runs an action: the same libraries plus Argo CD's safe os library (os.date and
// os.time only), the returned table turned back into an object (an empty table stays an array
// where the input had one), and checks that the document embeds each script verbatim. It prints
// one line per check, then "N passed, M failed", and exits 1 on any failure.
//
// With -run-action VERB -obj FILE it only runs that action on the object in FILE (JSON or
// YAML) and prints the object the action returned as JSON, or the action's error on stderr
// with exit code 3: the end-to-end test applies that output as Argo CD does. With
// -run-discovery -obj FILE it prints the verbs discovery offers, as "verb(disabled=bool)".
//
// Usage (from hack/check-argocd-health): go run . -dir ../ -doc ../../argocd-health.md
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// The health statuses Argo CD accepts from a script; any other value becomes Unknown.
var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

type healthTests struct {
	Tests []struct {
		InputPath    string       `json:"inputPath"`
		HealthStatus healthStatus `json:"healthStatus"`
	} `json:"tests"`
}

func main() {
	dir := flag.String("dir", "..", "directory holding health.lua, health_test.yaml and testdata/")
	doc := flag.String("doc", "../../argocd-health.md", "document that must embed health.lua (empty: skip)")
	runAction := flag.String("run-action", "", "only run this action on -obj and print the object it returns")
	runDiscoveryOnly := flag.Bool("run-discovery", false, "only run discovery.lua on -obj and print the verbs it offers")
	objPath := flag.String("obj", "", "the object -run-action runs on (JSON or YAML)")
	flag.Parse()

	if *runDiscoveryOnly {
		obj, err := readObject(*objPath)
		if err != nil {
			fatal(err)
		}
		script, err := os.ReadFile(filepath.Join(*dir, "actions", "discovery.lua"))
		if err != nil {
			fatal(err)
		}
		got, err := runDiscovery(string(script), obj)
		if err != nil {
			fatal(err)
		}
		fmt.Println(strings.Join(got, " "))
		return
	}
	if *runAction != "" {
		obj, err := readObject(*objPath)
		if err != nil {
			fatal(err)
		}
		out, err := runActionFile(filepath.Join(*dir, "actions", *runAction, "action.lua"), obj)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		raw, err := json.Marshal(out)
		if err != nil {
			fatal(err)
		}
		fmt.Println(string(raw))
		return
	}

	passed, failed := 0, 0
	report := func(ok bool, name, detail string) {
		if ok {
			passed++
			fmt.Printf("ok    %s: %s\n", name, detail)
		} else {
			failed++
			fmt.Printf("FAIL  %s: %s\n", name, detail)
		}
	}

	script, err := os.ReadFile(filepath.Join(*dir, "health.lua"))
	if err != nil {
		fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(*dir, "health_test.yaml"))
	if err != nil {
		fatal(err)
	}
	var tests healthTests
	if err := yaml.UnmarshalStrict(raw, &tests); err != nil {
		fatal(fmt.Errorf("health_test.yaml: %w", err))
	}
	if len(tests.Tests) == 0 {
		fatal(errors.New("health_test.yaml: no tests"))
	}

	tested := map[string]bool{}
	for _, tc := range tests.Tests {
		tested[filepath.Clean(tc.InputPath)] = true
		got, err := runFile(string(script), filepath.Join(*dir, tc.InputPath))
		switch {
		case err != nil:
			report(false, tc.InputPath, err.Error())
		case got != tc.HealthStatus:
			report(false, tc.InputPath, fmt.Sprintf("got %s %q, want %s %q",
				got.Status, got.Message, tc.HealthStatus.Status, tc.HealthStatus.Message))
		default:
			report(true, tc.InputPath, fmt.Sprintf("%s %q", got.Status, got.Message))
		}
	}

	// Every testdata file is an input of some test (an orphan is a test someone forgot to list).
	files, err := filepath.Glob(filepath.Join(*dir, "testdata", "*.yaml"))
	if err != nil {
		fatal(err)
	}
	sort.Strings(files)
	var orphans []string
	for _, f := range files {
		rel, _ := filepath.Rel(*dir, f)
		if !tested[filepath.Clean(rel)] {
			orphans = append(orphans, rel)
		}
	}
	report(len(orphans) == 0, "testdata", fmt.Sprintf("%d files, not in health_test.yaml: %v", len(files), orphans))

	if *doc != "" {
		ok, detail := embeds(*doc, string(script))
		report(ok, filepath.Base(*doc), detail)
	}

	checkActions(*dir, *doc, report)

	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// runFile decodes one YAML object and runs the health script on it.
func runFile(script, path string) (healthStatus, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return healthStatus{}, err
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return healthStatus{}, fmt.Errorf("%s: %w", path, err)
	}
	return runHealth(script, obj)
}

// runHealth executes the script as Argo CD does for a health check configured in argocd-cm.
func runHealth(script string, obj map[string]any) (healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return healthStatus{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return healthStatus{}, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return healthStatus{}, fmt.Errorf("the script returned a %s, not a table", l.Get(-1).Type())
	}
	var hs healthStatus
	for key, field := range map[string]*string{"status": &hs.Status, "message": &hs.Message} {
		switch v := ret.RawGetString(key).(type) {
		case lua.LString:
			*field = string(v)
		case *lua.LNilType:
		default:
			return healthStatus{}, fmt.Errorf("%s is a %s, not a string", key, v.Type())
		}
	}
	if !validStatuses[hs.Status] {
		return healthStatus{}, fmt.Errorf("invalid health status %q (Argo CD would show Unknown)", hs.Status)
	}
	return hs, nil
}

// toLua converts a decoded JSON/YAML value to a Lua value: objects and arrays become tables
// (arrays 1-based), numbers LNumber, null nil — the shape Argo CD gives the script.
func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	default:
		panic(fmt.Sprintf("unexpected %T in a decoded object", v))
	}
}

// embeds reports whether every `resource.customizations.health.dualwrite.io_DualWritePipeline: |`
// block scalar in the document holds exactly the script (there must be at least one).
func embeds(docPath, script string) (bool, string) {
	return embedsAt(docPath, "resource.customizations.health.dualwrite.io_DualWritePipeline: |", "", script)
}

// embedsAt reports whether every block scalar under a line `key` (after a line `after`, when
// not empty) in the document holds exactly the script (there must be at least one).
func embedsAt(docPath, key, after, script string) (bool, string) {
	raw, err := os.ReadFile(docPath)
	if err != nil {
		return false, err.Error()
	}
	doc := strings.Split(string(raw), "\n")
	want := strings.Split(strings.TrimRight(script, "\n"), "\n")
	var found []int
	for at, keyLine := range doc {
		if strings.TrimSpace(keyLine) != key {
			continue
		}
		if after != "" && (at == 0 || strings.TrimSpace(doc[at-1]) != after) {
			continue
		}
		found = append(found, at+1)
		indent := keyLine[:len(keyLine)-len(strings.TrimLeft(keyLine, " "))] + "  "
		for i, line := range want {
			got := ""
			if at+1+i < len(doc) {
				got = doc[at+1+i]
			}
			if (line == "" && strings.TrimSpace(got) != "") || (line != "" && got != indent+line) {
				return false, fmt.Sprintf("the block at line %d differs from the script at its line %d: "+
					"copy the script into it again, indented by %d spaces", at+1, i+1, len(indent))
			}
		}
	}
	if len(found) == 0 {
		return false, "no " + key + " block"
	}
	return true, fmt.Sprintf("%d blocks (lines %v) hold the script verbatim", len(found), found)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "check-argocd-health:", err)
	os.Exit(2)
}
