"""The auditor's console in a real browser (headless Chromium through
WebDriver): after `crossgate demo`, an auditor filters the log for
education, opens an entry, runs verify, downloads the filter's export and
looks at the charts. Screenshots go to target/.

    python test_console.py target/debug/crossgate

Exit 0 when every check passed; the first failed check is printed.
"""

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


# Ports below the kernel's range for outgoing connections, as the Python
# client's test picks them.
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from test_client import free_port  # noqa: E402


def wait_for_port(port, seconds=20):
    until = time.time() + seconds
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main(binary):
    binary = os.path.abspath(binary)
    work = tempfile.mkdtemp(prefix="crossgate-browser-")
    config = os.path.join(work, "config")
    shutil.copytree(os.path.join(ROOT, "deploy", "local"), config,
                    ignore=shutil.ignore_patterns("limits.overrides.toml*"))
    store = f"sqlite:{os.path.join(work, 'audit.db')}"
    broker_toml = os.path.join(config, "broker.toml")
    text = open(broker_toml).read()
    text = re.sub(r'(?m)^store = .*$', f'store = "{store}"', text)
    text = re.sub(r'(?m)^certs = .*$', f'certs = "{os.path.join(work, "certs")}"', text)
    open(broker_toml, "w").write(text)

    demo = subprocess.run([binary, "demo", "--config", config, "--state", os.path.join(work, "state")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr

    port = free_port()
    console = subprocess.Popen([binary, "console", "--store", store, "--listen", f"127.0.0.1:{port}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    downloads = os.path.join(work, "downloads")
    os.makedirs(downloads)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": downloads,
        "download.prompt_for_download": False,
    })
    driver = None
    try:
        wait_for_port(port)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        wait = WebDriverWait(driver, 15)
        base = f"http://localhost:{port}"

        # Filter for education.
        driver.get(base + "/")
        assert "crossgate audit console" in driver.title, driver.title
        field = driver.find_element(By.NAME, "consumer")
        field.send_keys("education")
        field.submit()
        wait.until(lambda d: "consumer=education" in d.current_url)
        summary = driver.find_element(By.TAG_NAME, "main").text
        match = re.search(r"(\d+) entries match", summary)
        assert match, summary
        matched = int(match.group(1))
        assert matched > 0, summary
        rows = driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr")
        assert rows, "no rows shown"
        consumers = {r.find_elements(By.TAG_NAME, "td")[2].text for r in rows}
        assert consumers == {"education"}, consumers
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        driver.save_screenshot(os.path.join(ROOT, "target", "console-search.png"))

        # Open an entry: every field, its hashes.
        driver.find_element(By.CSS_SELECTOR, "a.entry-link").click()
        wait.until(lambda d: "/entry?" in d.current_url)
        entry = driver.find_element(By.ID, "entry").text
        assert "entry hash" in entry and "previous hash" in entry, entry
        assert re.search(r"\b[0-9a-f]{64}\b", entry), entry
        assert "education" in entry, entry
        driver.save_screenshot(os.path.join(ROOT, "target", "console-entry.png"))

        # Verify.
        driver.find_element(By.LINK_TEXT, "Verify").click()
        wait.until(lambda d: d.find_elements(By.ID, "verdict"))
        verdict = driver.find_element(By.ID, "verdict").text
        assert "Every chain verifies" in verdict, verdict

        # Export the filter as CSV: the file holds exactly what matched.
        driver.get(base + "/?consumer=education")
        driver.find_element(By.ID, "export-csv").click()
        path = os.path.join(downloads, "crossgate-audit.csv")
        until = time.time() + 15
        while not os.path.exists(path) and time.time() < until:
            time.sleep(0.1)
        assert os.path.exists(path), os.listdir(downloads)
        rows = list(csv.DictReader(io.StringIO(open(path, encoding="utf-8").read())))
        assert len(rows) == matched, (len(rows), matched)
        assert {r["consumer"] for r in rows} == {"education"}

        # Charts, drawn by the server.
        driver.find_element(By.LINK_TEXT, "Charts").click()
        wait.until(lambda d: len(d.find_elements(By.TAG_NAME, "svg")) == 4)
        driver.save_screenshot(os.path.join(ROOT, "target", "console-charts.png"))
        print(f"the browser saw {matched} education entries, an entry, an intact log, "
              f"an export of {len(rows)} rows and four charts")
    finally:
        if driver is not None:
            driver.quit()
        console.kill()
        console.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/debug/crossgate")
