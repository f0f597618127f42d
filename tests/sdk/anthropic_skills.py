"""Skills through the official Anthropic SDK against Sandstone: upload as
files, add a version as a gzipped tar (an executable kept executable), attach
to an agent, and download into a workdir the way the SDK's worker does.

env: ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, SANDSTONE_ENV_ID, WORKDIR
"""
import asyncio
import io
import os
import stat
import sys
import tarfile

import anthropic

import _record  # noqa: F401  (records the exchanges when SANDSTONE_RECORD_DIR is set)
from anthropic.lib.tools._skills import download_session_skills

SKILL_MD = b"---\nname: hello-skill\ndescription: Says hello.\n---\nRun run.sh.\n"


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def targz():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data, mode in [("hello-skill/SKILL.md", SKILL_MD, 0o644),
                                 ("hello-skill/run.sh", b"#!/bin/sh\necho hello v2\n", 0o755),
                                 ("hello-skill/../escape", b"x", 0o644)]:
            if ".." in name:
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def main():
    client = anthropic.Anthropic(_strict_response_validation=True)
    skill = client.beta.skills.create(files=[("hello-skill/SKILL.md", SKILL_MD),
                                             ("hello-skill/run.sh", b"echo hello v1\n")])
    if skill.display_name != "hello-skill" or not skill.id.startswith("skill_"):
        fail(f"created skill: {skill}")
    v2 = client.beta.skills.versions.create(skill.id, files=[("skill.tar.gz", targz())])
    got = client.beta.skills.versions.retrieve("latest", skill_id=skill.id)
    if got.id != v2.id or got.name != "hello-skill":
        fail(f"latest version: {got} vs {v2}")
    versions = list(client.beta.skills.versions.list(skill.id))
    if len(versions) != 2:
        fail(f"versions: {versions}")
    if client.beta.skills.retrieve(skill.id).latest_version_id != v2.id:
        fail("retrieve: latest is not v2")
    if skill.id not in [s.id for s in client.beta.skills.list()]:
        fail("list: the skill is missing")
    archive = client.beta.skills.versions.download(v2.version, skill_id=skill.id).read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as t:
        if "hello-skill/run.sh" not in t.getnames():
            fail(f"download: {t.getnames()}")
    # Versions go one at a time, the newest left becoming latest; the last
    # goes with the skill.
    bye_md = SKILL_MD.replace(b"hello-skill", b"bye-skill")
    bye = client.beta.skills.create(files=[("bye-skill/SKILL.md", bye_md)])
    b2 = client.beta.skills.versions.create(bye.id, files=[("bye-skill/SKILL.md", bye_md + b"v2\n")])
    gone = client.beta.skills.versions.delete(b2.version, skill_id=bye.id)
    if gone.type != "skill_version_deleted" or gone.id != b2.id:
        fail(f"version delete: {gone}")
    if client.beta.skills.retrieve(bye.id).latest_version_id != bye.latest_version_id:
        fail("latest did not fall back to the remaining version")
    try:
        client.beta.skills.versions.delete(bye.latest_version, skill_id=bye.id)
        fail("the last version was deleted without its skill")
    except anthropic.ConflictError:
        pass
    if client.beta.skills.delete(bye.id).type != "skill_deleted":
        fail("skill delete")
    try:
        client.beta.skills.retrieve(bye.id)
        fail("a deleted skill is still there")
    except anthropic.NotFoundError:
        pass
    agent = client.beta.agents.create(name="skilled", model="scripted-e2e",
                                      skills=[{"type": "custom", "skill_id": skill.id}])
    if agent.skills[0].version != v2.version:
        fail(f"agent skill version not resolved: {agent.skills}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=os.environ["SANDSTONE_ENV_ID"])
    aclient = anthropic.AsyncAnthropic(_strict_response_validation=True)
    dirs = await download_session_skills(aclient, workdir=os.environ["WORKDIR"], session=session)
    root = os.path.join(os.environ["WORKDIR"], "skills", "hello-skill")
    if [str(d) for d in dirs] != [os.path.realpath(root)]:
        fail(f"downloaded: {dirs}")
    run = os.path.join(root, "run.sh")
    if open(run).read() != "#!/bin/sh\necho hello v2\n" or not os.stat(run).st_mode & stat.S_IXUSR:
        fail("run.sh is not v2 or not executable")
    if os.path.exists(os.path.join(os.environ["WORKDIR"], "skills", "escape")):
        fail("a path escaped the skill directory")
    print("skills OK")


asyncio.run(main())
